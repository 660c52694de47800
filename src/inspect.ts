/** `fixedram inspect`: what a snapshot (or QEMU mapped-ram file) holds, from its metadata alone. */
import { describeDeviceState } from './devstate';
import { openImage, runningUpdate } from './image';
import type { RamImage } from './snapshot';

export interface InspectedBlock {
  name: string;
  length: number;
  pageSize: number;
  pages: number;
  pagesOffset: number;
  bitmapOffset: number;
  presentPages: number;
  zeroPages: number;
}

export interface InspectResult {
  format: RamImage['format'];
  path: string;
  fileSize: number;
  /** complete, incomplete (a save that did not finish) or updating (an interrupted update). */
  state: 'complete' | 'incomplete' | 'updating';
  stateMessage?: string;
  blocks: InspectedBlock[];
  [extra: string]: unknown;
}

/** Reads the metadata of an image. Structural problems throw (exit 3); an incomplete state does not. */
export function inspect(file: string): InspectResult {
  const image = openImage(file);
  try {
    const inc = image.incomplete;
    const ds = image.readDeviceState?.();
    // UPDATING with the lock held is an update in progress, not an interrupted one
    const running = image.state === 'updating' && image.format === 'fixedram' ? runningUpdate(file) : undefined;
    const stateMessage = running
      ? `being updated in place by ${running.pid !== undefined ? `pid ${running.pid}` : 'another process'} right now (save --update is running)`
      : inc?.message;
    return {
      format: image.format,
      path: image.path,
      fileSize: image.size,
      state: image.state,
      ...(stateMessage !== undefined ? { stateMessage } : {}),
      ...(running ? { updateRunning: true, ...(running.pid !== undefined ? { updaterPid: running.pid } : {}) } : {}),
      ...(image.details ?? {}),
      ...(ds ? { deviceState: describeDeviceState(ds) } : {}),
      blocks: image.blocks.map((b) => ({
        name: b.name,
        length: b.length,
        pageSize: b.pageSize,
        pages: b.pages,
        pagesOffset: b.pagesOffset,
        bitmapOffset: b.bitmapOffset,
        presentPages: b.presentPages,
        zeroPages: b.pages - b.presentPages,
      })),
    };
  } finally {
    image.close();
  }
}
