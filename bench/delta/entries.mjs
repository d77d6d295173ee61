// What each applier adds to a bundle (see apply.mjs): one entry per candidate.
export const ENTRIES = {
  'Fossil, string applier (appliers.mjs)': "export { fossilApply } from './appliers.mjs';",
  'Fossil, fossil-delta 2.0.0 applyDelta (bytes)': "export { applyDelta } from 'fossil-delta';",
  'JSON merge patch, copy on write (appliers.mjs)': "export { mergePatch } from './appliers.mjs';",
  'VCDIFF, @ably/vcdiff-decoder 1.0.6': "export { decode } from '@ably/vcdiff-decoder';",
};
