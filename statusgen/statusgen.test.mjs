// The JavaScript twin gives the same streams as the crate: `node --test statusgen/`.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { StatusStream, digest } from './statusgen.mjs';

test('streams match the digests the crate records', () => {
  const lines = readFileSync(new URL('./digests.txt', import.meta.url), 'utf8')
    .split('\n').filter((l) => l.trim() && !l.startsWith('#'));
  assert.ok(lines.length >= 3);
  for (const line of lines) {
    const [kind, site, seed, restamp, count, hash, total] = line.split(/\s+/);
    const texts = new StatusStream(kind, site, Number(seed)).restampAll(restamp === '1').take(Number(count));
    const bytes = texts.reduce((n, t) => n + t.length, 0);
    assert.equal(`${digest(texts).toString(16).padStart(8, '0')} ${bytes}`, `${hash} ${total}`, line);
  }
});

test('publications parse and keep the status shape', () => {
  const s = StatusStream.device('mrc', 7);
  for (let i = 0; i < 20; i++) {
    const data = s.nextData();
    const v = JSON.parse(data);
    assert.equal(v.statusType, 'device');
    assert.equal(typeof v.status.mount.mount1.right_ascension.val, 'number');
    assert.deepEqual(JSON.parse(StatusStream.publication('mrc', data)).data, v);
  }
});
