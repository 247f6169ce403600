// One command from a fresh clone: `npm --prefix demo start [-- server flags]`.
// Installs the demo's npm packages if missing (npm ci, from the lockfile),
// builds the demo, then runs the server in release mode serving it at `/`
// (http://127.0.0.1:8080/?room=team by default). Extra arguments go to the
// server, e.g. `npm --prefix demo start -- --port 9000`.
import { spawnSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const demo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const repo = path.dirname(demo);

function run(cmd, args, cwd) {
  const r = spawnSync(cmd, args, { cwd, stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`\`${cmd} ${args.join(' ')}\` failed (${r.error ? r.error.message : `exit ${r.status}`})`);
    process.exit(r.status || 1);
  }
}

if (!fs.existsSync(path.join(demo, 'node_modules', '.package-lock.json'))) {
  console.log('installing the demo\'s npm packages (npm ci)…');
  run('npm', ['ci', '--no-audit', '--no-fund'], demo);
}
run(process.execPath, [path.join(demo, 'scripts', 'build.mjs')], demo);

const args = ['run', '--release', '--', '--demo-dir', path.join(demo, 'dist'), ...process.argv.slice(2)];
console.log(`starting: cargo ${args.join(' ')}`);
const server = spawn('cargo', args, { cwd: repo, stdio: 'inherit' });
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => server.kill(sig));
server.on('exit', (code, signal) => process.exit(code ?? (signal ? 0 : 1)));
