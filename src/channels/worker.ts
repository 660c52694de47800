/** Entry point of a channel's worker thread. */
import { parentPort, workerData } from 'node:worker_threads';
import { runChannel } from './channel';
import type { ChannelJob, ChannelMessage } from './messages';

runChannel(workerData as ChannelJob, (m: ChannelMessage) => parentPort!.postMessage(m));
