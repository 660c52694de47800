/**
 * A write-back pump shared by save and update: the device works while the channels copy, and no
 * channel ever waits for it.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from './native';

/**
 * Starts write-back of the snapshot's dirty pages (sync_file_range WRITE on a libuv pool thread)
 * again and again while the channels run, so the device works while the channels read and hash,
 * and no channel ever waits in sync_file_range. Durability still comes from the fdatasync after
 * the pages; this only moves the device's work earlier.
 */
export function writebackPump(fd: number, length: number): { calls: number; stop(): Promise<void> } {
  let running = true;
  const state = { calls: 0, stop: async (): Promise<void> => {} };
  const loop = (async (): Promise<void> => {
    while (running) {
      await native().syncRangeAsync(fd, 0, length);
      state.calls++;
      if (running) await sleep(kWritebackPeriodMs);
    }
  })();
  state.stop = async (): Promise<void> => {
    running = false;
    await loop.catch(() => undefined); // best effort, as syncRange is
  };
  return state;
}

const kWritebackPeriodMs = 5;
