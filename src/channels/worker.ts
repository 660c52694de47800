/**
 * Entry point of a channel's worker thread. The job comes as workerData; or, for a channel started
 * ahead of its job (see prestartChannels), as the first message; or, for a channel of a walk's pool
 * (see ChannelPool), as one message per window, for as long as the pool lives (a channel the pool
 * starts ahead of its first window first posts `{ type: 'ready' }`, once its modules are loaded).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { runChannel } from './channel';
import { native } from '../native';
import type { ChannelJob, ChannelMessage } from './messages';

const post = (m: ChannelMessage): void => parentPort!.postMessage(m);
// a channel started ahead of its job loads the addon while it waits (a failure here is met again,
// and reported, by the job's channel)
const preload = (): void => {
  try {
    native();
  } catch {
    // reported by runChannel
  }
};
const data = workerData as ChannelJob | { persistent: true; announce?: boolean } | undefined;
if (data && 'kind' in data) runChannel(data, post);
else if (data?.persistent) {
  parentPort!.on('message', (job: ChannelJob) => runChannel(job, post));
  // started ahead (ChannelPool.prestart): say that the modules and the addon are loaded
  if (data.announce) {
    preload();
    parentPort!.postMessage({ type: 'ready' });
  }
} else {
  parentPort!.once('message', (job: ChannelJob) => runChannel(job, post));
  preload();
}
