/**
 * Entry point of a channel's worker thread. The job comes as workerData, or, for a channel started
 * ahead of its job (see prestartChannels), as the first message.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { runChannel } from './channel';
import type { ChannelJob, ChannelMessage } from './messages';

const post = (m: ChannelMessage): void => parentPort!.postMessage(m);
if (workerData) runChannel(workerData as ChannelJob, post);
else parentPort!.once('message', (job: ChannelJob) => runChannel(job, post));
