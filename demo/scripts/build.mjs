// Builds the demo into demo/dist (served by the server at `/`):
//   dist/index.html, dist/assets/{widget,page,chorus-client}.js
// Usage: node scripts/build.mjs [--dev]   (--dev: no minification)
import * as esbuild from 'esbuild';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const dev = process.argv.includes('--dev');

const common = {
  bundle: true,
  format: 'esm',
  target: ['es2022'],
  minify: !dev,
  sourcemap: true,
  legalComments: 'linked',
  logLevel: 'warning',
  loader: { '.css': 'text' },
};

// The page loads the widget bundle as a separate module (the same file the
// script embed uses), so it is not bundled twice.
const widgetExternal = {
  name: 'widget-external',
  setup(build) {
    build.onResolve({ filter: /\/widget\/widget\.js$/ }, () => ({ path: './widget.js', external: true }));
  },
};

await fs.rm(dist, { recursive: true, force: true });
await fs.mkdir(path.join(dist, 'assets'), { recursive: true });
await Promise.all([
  esbuild.build({ ...common, entryPoints: [path.join(root, 'src/widget/widget.js')], outfile: path.join(dist, 'assets/widget.js') }),
  esbuild.build({ ...common, entryPoints: [path.join(root, 'src/page.js')], outfile: path.join(dist, 'assets/page.js'), plugins: [widgetExternal] }),
  esbuild.build({ ...common, entryPoints: [path.join(root, 'src/client/index.js')], outfile: path.join(dist, 'assets/chorus-client.js') }),
  fs.copyFile(path.join(root, 'src/index.html'), path.join(dist, 'index.html')),
  fs.copyFile(path.join(root, 'src/client/index.d.ts'), path.join(dist, 'assets/chorus-client.d.ts')),
  fs.copyFile(path.join(root, 'src/embed-example.html'), path.join(dist, 'assets/embed-example.html')),
]);
const sizes = [];
for (const f of await fs.readdir(path.join(dist, 'assets'))) {
  if (f.endsWith('.js')) sizes.push(`${f} ${((await fs.stat(path.join(dist, 'assets', f))).size / 1024).toFixed(0)} KiB`);
}
console.log(`built ${path.relative(process.cwd(), dist) || dist}: ${sizes.join(', ')}`);
