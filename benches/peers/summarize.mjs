// Prints one table per scenario from chorus-load's JSON lines, with ratios
// against Chorus (the row whose server is `chorus`).
// Usage: node summarize.mjs results.jsonl
import { readFileSync } from 'node:fs'

const rows = readFileSync(process.argv[2], 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
const f = (x, d = 1) => (x === null || x === undefined || Number.isNaN(x) ? '-' : Number(x).toFixed(d))
const ratio = (a, b) => (a && b ? `${(a / b).toFixed(2)}x` : '-')
const byScenario = new Map()
for (const r of rows) {
  if (!byScenario.has(r.scenario)) byScenario.set(r.scenario, [])
  byScenario.get(r.scenario).push(r)
}
for (const [scenario, list] of byScenario) {
  const base = list.find((r) => r.server === 'chorus') ?? list[0]
  console.log(`\n### ${scenario}  ${JSON.stringify(base.params)}\n`)
  let head, cells
  if (scenario === 'fanout') {
    head = ['server', 'clients', 'p50 ms', 'p95 ms', 'p99 ms', 'max ms', 'delivered/s', 'cpu s', 'µs cpu/delivery', 'peak RSS MB', 'cpu/delivery vs chorus']
    cells = (r) => [r.server, r.clients, f(r.latency_ms?.p50, 2), f(r.latency_ms?.p95, 2), f(r.latency_ms?.p99, 2), f(r.latency_ms?.max, 1),
      f(r.delivered_per_sec, 0), f(r.server_cpu_secs, 2), f(r.server_cpu_us_per_delivered, 2), f(r.server_peak_rss_kb / 1024),
      ratio(r.server_cpu_us_per_delivered, base.server_cpu_us_per_delivered)]
  } else if (scenario === 'idle' || scenario === 'rooms') {
    head = ['server', 'clients', 'failed', 'RSS before MB', 'RSS after MB', 'KB per ' + (scenario === 'idle' ? 'connection' : 'room'), 'cpu cores', 'vs chorus']
    cells = (r) => [r.server, r.clients, r.failed_connects, f(r.server_rss_before_kb / 1024), f(r.server_rss_after_kb / 1024), f(r.rss_per_unit_kb, 2),
      f(r.server_cpu_cores, 2), ratio(r.rss_per_unit_kb, base.rss_per_unit_kb)]
  } else if (scenario === 'join-storm') {
    head = ['server', 'clients', 'failed', 'sync p50 ms', 'sync p99 ms', 'all synced s', 'cpu s', 'peak RSS MB', 'time vs chorus']
    cells = (r) => [r.server, r.clients, r.failed_connects, f(r.sync_ms?.p50, 0), f(r.sync_ms?.p99, 0), f(r.secs, 2), f(r.server_cpu_secs, 2),
      f(r.server_peak_rss_kb / 1024), ratio(r.secs, base.secs)]
  } else if (scenario === 'crowd') {
    head = ['server', 'members', 'failed', 's until the probe saw all (or gave up)', 'cpu s', 'RSS growth KB per member', 'peak RSS MB']
    cells = (r) => [r.server, r.clients, r.failed_connects, f(r.secs, 2), f(r.server_cpu_secs, 2), f(r.rss_per_unit_kb, 2),
      f(r.server_peak_rss_kb / 1024)]
  } else {
    head = ['server', 'clients', 'frames in/s', 'MB in', 'cpu cores', 'peak RSS MB', 'cpu vs chorus']
    cells = (r) => [r.server, r.clients, f(r.delivered_per_sec, 0), f(r.bytes_in / 1e6), f(r.server_cpu_cores, 2), f(r.server_peak_rss_kb / 1024),
      ratio(r.server_cpu_cores, base.server_cpu_cores)]
  }
  console.log(`| ${head.join(' | ')} |`)
  console.log(`|${head.map(() => '---').join('|')}|`)
  for (const r of list) console.log(`| ${cells(r).join(' | ')} |`)
  for (const r of list) for (const n of r.notes ?? []) if (/fail|error/i.test(n)) console.log(`- ${r.server}: ${n}`)
}
