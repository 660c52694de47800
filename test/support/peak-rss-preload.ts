/**
 * Preloaded (node --require) into a fixedram child by test/support/peak-rss.ts: writes the process's
 * peak resident set size (KiB, every thread included) to $FIXEDRAM_PEAK_RSS_FILE when it exits.
 */
import * as fs from 'node:fs';

const out = process.env.FIXEDRAM_PEAK_RSS_FILE;
if (out) {
  process.on('exit', () => {
    fs.writeFileSync(out, String(process.resourceUsage().maxRSS));
  });
}
