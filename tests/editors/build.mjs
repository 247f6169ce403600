// Bundles the stock-editor pages into dist/ (classic scripts, so the pages
// open from file:// and reach the server under test by the URL they are given):
//   dist/{tiptap,codemirror}.{html,js}
import * as esbuild from 'esbuild';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(root, 'dist');
await fs.rm(dist, { recursive: true, force: true });
await fs.mkdir(dist, { recursive: true });
await Promise.all(
  ['tiptap', 'codemirror'].flatMap((page) => [
    esbuild.build({
      entryPoints: [path.join(root, 'src', `${page}.js`)],
      outfile: path.join(dist, `${page}.js`),
      bundle: true,
      format: 'iife',
      target: ['es2022'],
      logLevel: 'warning',
    }),
    fs.copyFile(path.join(root, 'src', `${page}.html`), path.join(dist, `${page}.html`)),
  ]),
);
console.log(`built ${dist}`);
