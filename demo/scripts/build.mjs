// Builds the demo into demo/dist (served by the server at `/`):
//   dist/index.html                      the page (loads the hashed page bundle)
//   dist/favicon.ico, dist/favicon.svg   the icon
//   dist/assets/{widget,page,chorus-client}-<HASH>.js   content-hashed bundles
//     (the server caches them as immutable: their content never changes)
//   dist/assets/{widget,chorus-client}.js   stable entry names for embedding
//     (`export * from './widget-<HASH>.js'`, tiny, served no-cache)
//   dist/assets/manifest.json            stable name -> hashed name
//   *.br, *.gz next to every text file   precompressed (brotli q11, gzip -9);
//     the server picks one by Accept-Encoding
// Usage: node scripts/build.mjs [--dev]   (--dev: no minification)
import * as esbuild from 'esbuild';
import fs from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const assets = path.join(dist, 'assets');
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
  outdir: assets,
  entryNames: '[name]-[hash]',
  metafile: true,
};

/** Builds one entry; returns the hashed file name of its bundle. */
async function bundle(entry, name, plugins = []) {
  const result = await esbuild.build({ ...common, entryPoints: { [name]: path.join(root, entry) }, plugins });
  const out = Object.entries(result.metafile.outputs).find(([, o]) => o.entryPoint);
  return path.basename(out[0]);
}

await fs.rm(dist, { recursive: true, force: true });
await fs.mkdir(assets, { recursive: true });

const widget = await bundle('src/widget/widget.js', 'widget');
// The page loads the widget bundle as a separate module (the same file the
// script embed uses), so it is not bundled twice.
const widgetExternal = {
  name: 'widget-external',
  setup(build) {
    build.onResolve({ filter: /\/widget\/widget\.js$/ }, () => ({ path: `./${widget}`, external: true }));
  },
};
const [page, client] = await Promise.all([bundle('src/page.js', 'page', [widgetExternal]), bundle('src/client/index.js', 'chorus-client')]);

// Stable entry names for pages that embed the widget or import the client:
// re-export the hashed bundle (module side effects such as defining
// <chorus-room> run on import; `import.meta.url` stays under /assets/).
const stub = (file) => `// Stable entry: the content-hashed bundle is cached as immutable.\nexport * from './${file}';\n`;
const manifest = { 'widget.js': widget, 'page.js': page, 'chorus-client.js': client };
const html = (await fs.readFile(path.join(root, 'src/index.html'), 'utf8')).replace('/assets/page.js', `/assets/${page}`);
if (!html.includes(page)) throw new Error('src/index.html does not load /assets/page.js');
await Promise.all([
  fs.writeFile(path.join(dist, 'index.html'), html),
  fs.writeFile(path.join(assets, 'widget.js'), stub(widget)),
  fs.writeFile(path.join(assets, 'chorus-client.js'), stub(client)),
  fs.writeFile(path.join(assets, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`),
  fs.copyFile(path.join(root, 'src/client/index.d.ts'), path.join(assets, 'chorus-client.d.ts')),
  fs.copyFile(path.join(root, 'src/embed-example.html'), path.join(assets, 'embed-example.html')),
  fs.copyFile(path.join(root, 'src/favicon.svg'), path.join(dist, 'favicon.svg')),
  fs.writeFile(path.join(dist, 'favicon.ico'), favicon()),
]);

// Precompress every text file worth it (the server falls back to the
// plain file when the client accepts neither encoding).
const brotli = promisify(zlib.brotliCompress);
const gzip = promisify(zlib.gzip);
const COMPRESSIBLE = /\.(js|mjs|css|html|json|map|svg|txt|ts|ico)$/;
const sizes = [];
for (const dir of [dist, assets]) {
  for (const f of await fs.readdir(dir)) {
    const file = path.join(dir, f);
    if (!COMPRESSIBLE.test(f) || !(await fs.stat(file)).isFile()) continue;
    const raw = await fs.readFile(file);
    if (raw.length < 256) continue;
    const [br, gz] = await Promise.all([
      brotli(raw, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 11, [zlib.constants.BROTLI_PARAM_SIZE_HINT]: raw.length } }),
      gzip(raw, { level: 9 }),
    ]);
    await Promise.all([fs.writeFile(`${file}.br`, br), fs.writeFile(`${file}.gz`, gz)]);
    if (f.endsWith('.js')) sizes.push(`${f} ${kib(raw.length)} (gzip ${kib(gz.length)}, br ${kib(br.length)})`);
  }
}
console.log(`built ${path.relative(process.cwd(), dist) || dist}: ${sizes.join(', ')}`);

function kib(n) {
  return `${(n / 1024).toFixed(1)} KiB`;
}

/**
 * A 32×32 favicon.ico (one 32-bit BMP image) drawn like the logo: three
 * white arcs on an indigo rounded square. Drawn here so no binary is committed.
 */
function favicon() {
  const S = 32;
  const px = Buffer.alloc(S * S * 4);
  for (let y = 0; y < S; y++) {
    for (let x = 0; x < S; x++) {
      const cx = x + 0.5;
      const cy = y + 0.5;
      // Rounded square, radius 8.
      const dx = Math.max(8 - cx, 0, cx - (S - 8));
      const dy = Math.max(8 - cy, 0, cy - (S - 8));
      const inside = dx * dx + dy * dy <= 64;
      let [r, g, b, a] = inside ? [0x4f, 0x46, 0xe5, 255] : [0, 0, 0, 0];
      // Arcs centred near (16, 16) opening to the right, radii 4, 8, 12.
      const d = Math.hypot(cx - 17, cy - 16);
      if (inside && cx < 17.5 && [5, 9, 13].some((rad) => Math.abs(d - rad) < 1.3) && Math.abs(cy - 16) < 0.8 * d) [r, g, b] = [255, 255, 255];
      // BMP rows are bottom-up, pixels BGRA.
      const o = ((S - 1 - y) * S + x) * 4;
      px[o] = b;
      px[o + 1] = g;
      px[o + 2] = r;
      px[o + 3] = a;
    }
  }
  const mask = Buffer.alloc(S * 4); // AND mask: 1 bit a pixel, rows of 4 bytes; alpha rules
  const info = Buffer.alloc(40);
  info.writeUInt32LE(40, 0);
  info.writeInt32LE(S, 4);
  info.writeInt32LE(S * 2, 8); // height counts the XOR and AND masks
  info.writeUInt16LE(1, 12);
  info.writeUInt16LE(32, 14);
  info.writeUInt32LE(px.length + mask.length, 20);
  const image = Buffer.concat([info, px, mask]);
  const head = Buffer.alloc(6 + 16);
  head.writeUInt16LE(0, 0);
  head.writeUInt16LE(1, 2); // icon
  head.writeUInt16LE(1, 4); // one image
  head.writeUInt8(S, 6);
  head.writeUInt8(S, 7);
  head.writeUInt16LE(1, 10); // planes
  head.writeUInt16LE(32, 12); // bits per pixel
  head.writeUInt32LE(image.length, 14);
  head.writeUInt32LE(head.length, 18);
  return Buffer.concat([head, image]);
}
