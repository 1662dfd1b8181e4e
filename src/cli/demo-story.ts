/**
 * What `tunnat lab demo` prints, as pure functions over what it measured: the drawing of the lab,
 * the ping, HTTP and iperf3 summaries, and a short table of chosen metrics with units. lab.ts runs
 * the demo and feeds these; a unit test feeds them fixtures.
 */

/** The lab's addresses the drawing shows (from lab/lab.json). */
export interface DemoTopology {
  insidePrefix: string;
  gateway: string;
  hosts: Record<string, string>;
  outsidePrefix: string;
  natInterfaceAddress: string;
  natAddress: string;
  inet: string[];
  tun: string;
}

/** The lab as a small drawing: inside hosts, the NAT namespace, the internet hosts. */
export function drawLab(l: DemoTopology): string {
  const left = Object.entries(l.hosts).map(([n, a]) => `${n} ${a}`);
  const right = l.inet.map((a) => `inet ${a}`);
  const centre = `${l.gateway} [ nat: tunnat run, TUN ${l.tun} ] ${l.natInterfaceAddress}`;
  const w = Math.max(...left.map((x) => x.length));
  const k = w + 3 + 4 + centre.length + 3; // column of the right-hand junction
  const split = (xs: string[]) => [
    xs.slice(0, Math.ceil(xs.length / 2)),
    xs.slice(Math.ceil(xs.length / 2)),
  ];
  const [lt, lb] = split(left);
  const [rt, rb] = split(right);
  const rowsTop = Math.max(lt?.length ?? 0, rt?.length ?? 0);
  const rowsBottom = Math.max(lb?.length ?? 0, rb?.length ?? 0);
  const side = (xs: string[] | undefined, i: number, n: number, top: boolean) => {
    // Entries sit next to the middle line: top ones end at the last top row, bottom ones start at the first.
    const j = top ? i - (n - (xs?.length ?? 0)) : i;
    const x = xs?.[j];
    if (x === undefined) return null;
    const end = top ? j === 0 : j === (xs?.length ?? 0) - 1;
    return { x, corner: end ? (top ? "first" : "last") : "mid" };
  };
  const row = (i: number, n: number, top: boolean) => {
    const l0 = side(top ? lt : lb, i, n, top);
    const r0 = side(top ? rt : rb, i, n, top);
    const lc = l0 ? (l0.corner === "first" ? "┐" : l0.corner === "last" ? "┘" : "┤") : " ";
    const rc = r0 ? (r0.corner === "first" ? "┌" : r0.corner === "last" ? "└" : "├") : " ";
    const lpart = l0 ? `${l0.x.padEnd(w)} ──${lc}` : `${" ".repeat(w + 3)}${lc}`;
    return `${lpart.padEnd(k)}${rc}${r0 ? `── ${r0.x}` : ""}`;
  };
  const lines: string[] = [];
  for (let i = 0; i < rowsTop; i++) lines.push(row(i, rowsTop, true));
  lines.push(`${" ".repeat(w + 3)}├── ${centre} ──┤`);
  for (let i = 0; i < rowsBottom; i++) lines.push(row(i, rowsBottom, false));
  lines.push("");
  lines.push(
    `inside ${l.insidePrefix} (private); outside ${l.outsidePrefix} (stands for the internet).`,
  );
  lines.push(`tunnat translates every inside address to the NAT address ${l.natAddress}.`);
  return `${lines.map((x) => `  ${x}`.trimEnd()).join("\n")}\n`;
}

/** Decimal bytes with a unit, 3 significant digits ("20.0 MB"). */
export function bytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return u === 0 ? `${Math.round(v)} B` : `${v.toPrecision(3)} ${units[u]}`;
}

/** Bits per second with a unit ("3.30 Gbit/s"). */
export function bitRate(bps: number): string {
  const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
  let v = bps;
  let u = 0;
  while (Math.abs(v) >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return `${u === 0 ? Math.round(v) : v.toPrecision(3)} ${units[u]}`;
}

/** A count with thousands separators, rounded to an integer. */
function count(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}

export interface PingSummary {
  sent: number;
  received: number;
  rttMinMs: number;
  rttAvgMs: number;
  rttMaxMs: number;
}

/** iputils ping's last two lines ("3 packets transmitted, 3 received", "rtt min/avg/max/mdev"). */
export function parsePing(out: string): PingSummary | null {
  const c = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(out);
  const r = /= ([\d.]+)\/([\d.]+)\/([\d.]+)/.exec(out);
  if (!c) return null;
  return {
    sent: Number(c[1]),
    received: Number(c[2]),
    rttMinMs: r ? Number(r[1]) : Number.NaN,
    rttAvgMs: r ? Number(r[2]) : Number.NaN,
    rttMaxMs: r ? Number(r[3]) : Number.NaN,
  };
}

export interface IperfSummary {
  seconds: number;
  sentBytes: number;
  sentBps: number;
  retransmits: number;
  receivedBytes: number;
  receivedBps: number;
}

/** `iperf3 -c … -J`'s end summary. */
export function parseIperfJson(json: string): IperfSummary | null {
  try {
    const j = JSON.parse(json) as {
      end?: {
        sum_sent?: {
          seconds: number;
          bytes: number;
          bits_per_second: number;
          retransmits?: number;
        };
        sum_received?: { bytes: number; bits_per_second: number };
      };
    };
    const s = j.end?.sum_sent;
    const r = j.end?.sum_received;
    if (!s || !r) return null;
    return {
      seconds: s.seconds,
      sentBytes: s.bytes,
      sentBps: s.bits_per_second,
      retransmits: s.retransmits ?? 0,
      receivedBytes: r.bytes,
      receivedBps: r.bits_per_second,
    };
  } catch {
    return null;
  }
}

/** The iperf3 result as a small table with units and a labelled retransmit column. */
export function iperfTable(s: IperfSummary): string {
  const rows = [
    ["", "transferred", "throughput", "TCP retransmits"],
    ["sent by p1", bytes(s.sentBytes), bitRate(s.sentBps), count(s.retransmits)],
    ["received by inet", bytes(s.receivedBytes), bitRate(s.receivedBps), ""],
  ];
  return table(rows);
}

/** Prometheus text exposition -> series ("name{labels}") -> value. */
function parseExposition(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

/** Sum of every series of `name` (all label sets). */
function sum(s: Map<string, number>, name: string): number {
  let n = 0;
  for (const [k, v] of s) if (k === name || k.startsWith(`${name}{`)) n += v;
  return n;
}

/**
 * A few chosen metrics as a table with units, the numbers rounded. Flows and connections are
 * shown together so that "0 established" next to "3 TCP flows" explains itself: the demo's TCP
 * connections have closed and wait out their timer in the table.
 */
export function metricsTable(text: string, nowSec = Date.now() / 1000): string {
  const s = parseExposition(text);
  const v = (k: string) => s.get(k) ?? 0;
  const tcpFlows = v('tunnat_flows{protocol="tcp"}');
  const established = v("tunnat_active_connections");
  const batches = v("tunnat_datapath_batch_size_packets_count");
  const up = nowSec - v("process_start_time_seconds");
  const busy = v("tunnat_event_loop_busy_seconds_total");
  const rows: string[][] = [
    ["what", "value", "metric"],
    [
      "sent to the internet",
      `${bytes(v("tunnat_out_to_destination_bytes_total"))} in ${count(v("tunnat_out_to_destination_packets_total"))} packets`,
      "tunnat_out_to_destination_bytes_total",
    ],
    [
      "received from it",
      `${bytes(v("tunnat_in_from_destination_bytes_total"))} in ${count(v("tunnat_in_from_destination_packets_total"))} packets`,
      "tunnat_in_from_destination_bytes_total",
    ],
    [
      "TCP connections",
      `${count(v("tunnat_connection_attempts_total"))} opened, ${count(v("tunnat_connection_established_total"))} established`,
      "tunnat_connection_established_total",
    ],
    [
      "TCP flows in the table",
      `${count(tcpFlows)}: ${count(established)} established, ${count(tcpFlows - established)} closed (timer running)`,
      "tunnat_flows, tunnat_active_connections",
    ],
    [
      "UDP / ICMP flows in the table",
      `${count(v('tunnat_flows{protocol="udp"}'))} / ${count(v('tunnat_flows{protocol="icmp"}'))}`,
      "tunnat_flows",
    ],
    [
      "peak receive rate (10 s avg)",
      `${bytes(v("tunnat_peak_bytes_per_second"))}/s, ${count(v("tunnat_peak_packets_per_second"))} packets/s`,
      "tunnat_peak_bytes_per_second",
    ],
    [
      "packets dropped",
      `${count(sum(s, "tunnat_dropped_packets_total"))} (unsolicited inbound: ${count(sum(s, "tunnat_inbound_refused_packets_total"))})`,
      "tunnat_dropped_packets_total",
    ],
    [
      "packets per read from the TUN",
      `${batches > 0 ? (v("tunnat_datapath_batch_size_packets_sum") / batches).toFixed(1) : "0"} on average`,
      "tunnat_datapath_batch_size_packets",
    ],
    [
      "data-path thread busy",
      up > 0
        ? `${busy.toFixed(1)} s of ${up.toFixed(1)} s up (${Math.round((100 * busy) / up)} %)`
        : `${busy.toFixed(1)} s`,
      "tunnat_event_loop_busy_seconds_total",
    ],
  ];
  return table(rows);
}

/** Left-aligned columns, two spaces apart, indented by two, with a rule under the header. */
function table(rows: string[][]): string {
  const widths = (rows[0] ?? []).map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)));
  const line = (r: string[]) =>
    `  ${r.map((x, c) => (c === r.length - 1 ? x : x.padEnd(widths[c] ?? 0))).join("  ")}`.trimEnd();
  const [head, ...body] = rows;
  return `${[line(head ?? []), `  ${widths.map((w) => "-".repeat(w)).join("  ")}`, ...body.map(line)].join("\n")}\n`;
}
