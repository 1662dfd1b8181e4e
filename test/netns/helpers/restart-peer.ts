/**
 * Traffic for test/netns/restart.test.ts, run in a lab namespace with `node restart-peer.js`:
 *
 *   server PORT            TCP echo of lines and UDP echo of datagrams on PORT. Prints one JSON
 *                          line per accepted TCP connection {"accept": remote port} and per UDP
 *                          client the first time a source port is seen for it {"udp": id, "port"}.
 *   client ADDR PORT TCP UDP SECONDS
 *                          TCP connections sending a line every 100 ms, and UDP sockets sending a
 *                          numbered datagram every 100 ms, to ADDR:PORT, until SIGTERM (at most
 *                          SECONDS); then prints one JSON summary: connections reset or closed,
 *                          the longest wait for an echo (ms), UDP datagrams sent and answered, the
 *                          longest UDP silence, and how many TCP connections and UDP sockets had
 *                          no echo in the last 1.5 s (not going on at the end).
 *   client ADDR PORT TCP UDP SECONDS PROBE_MS
 *                          the same, plus a probe: one more UDP socket (id "probe") sending a
 *                          numbered datagram every PROBE_MS; the summary adds how many it sent
 *                          and got back (the packets lost) and the longest time between two
 *                          echoes (the forwarding gap, to about PROBE_MS).
 *
 * Only the lab's own addresses are given to it. Every loop is bounded by SECONDS.
 */
import { createSocket } from "node:dgram";
import { createConnection, createServer, type Socket } from "node:net";

const [mode, ...args] = process.argv.slice(2);

function server(port: number): void {
  const srv = createServer((s) => {
    process.stdout.write(`${JSON.stringify({ accept: s.remotePort })}\n`);
    s.on("data", (d) => s.write(d));
    s.on("error", () => undefined);
  });
  srv.listen(port, "0.0.0.0");
  const seen = new Map<string, Set<number>>();
  const udp = createSocket("udp4");
  udp.on("message", (m, r) => {
    const id = m.toString().split(" ")[0] ?? "";
    let ports = seen.get(id);
    if (!ports) {
      ports = new Set();
      seen.set(id, ports);
    }
    if (!ports.has(r.port)) {
      ports.add(r.port);
      process.stdout.write(`${JSON.stringify({ udp: id, port: r.port })}\n`);
    }
    udp.send(m, r.port, r.address);
  });
  udp.bind(port, "0.0.0.0");
  process.stdout.write(`${JSON.stringify({ listening: port })}\n`);
}

function client(
  addr: string,
  port: number,
  nTcp: number,
  nUdp: number,
  seconds: number,
  probeMs: number,
): void {
  let end = Date.now() + seconds * 1000;
  process.on("SIGTERM", () => {
    end = Date.now();
  });
  const out = {
    tcpOpen: 0,
    tcpErrors: [] as string[],
    tcpClosed: 0,
    tcpMaxWaitMs: 0,
    udpSent: 0,
    udpAnswered: 0,
    udpMaxSilenceMs: 0,
    localPorts: [] as number[],
    tcpStaleAtEnd: 0,
    udpStaleAtEnd: 0,
    probeSent: 0,
    probeAnswered: 0,
    probeMaxGapMs: 0,
  };
  const lastTcp: number[] = [];
  const lastUdp: number[] = [];
  const timers: NodeJS.Timeout[] = [];
  const socks: Socket[] = [];
  for (let i = 0; i < nTcp; i++) {
    const s = createConnection({ host: addr, port });
    socks.push(s);
    let last = 0;
    let buf = "";
    s.setNoDelay(true);
    s.on("connect", () => {
      out.tcpOpen++;
      out.localPorts.push(s.localPort ?? 0);
      last = Date.now();
      const t = setInterval(() => s.write(`line ${i} ${Date.now()}\n`), 100);
      timers.push(t);
    });
    s.on("data", (d) => {
      buf += d.toString();
      let k = buf.indexOf("\n");
      while (k >= 0) {
        const now = Date.now();
        if (last > 0) out.tcpMaxWaitMs = Math.max(out.tcpMaxWaitMs, now - last);
        last = now;
        lastTcp[i] = now;
        buf = buf.slice(k + 1);
        k = buf.indexOf("\n");
      }
    });
    s.on("error", (e) => out.tcpErrors.push((e as NodeJS.ErrnoException).code ?? String(e)));
    s.on("close", () => {
      if (Date.now() < end) out.tcpClosed++;
    });
  }
  for (let i = 0; i < nUdp; i++) {
    const u = createSocket("udp4");
    let seq = 0;
    let last = Date.now();
    u.on("message", () => {
      const now = Date.now();
      out.udpAnswered++;
      out.udpMaxSilenceMs = Math.max(out.udpMaxSilenceMs, now - last);
      last = now;
      lastUdp[i] = now;
    });
    u.on("error", () => undefined);
    u.bind(0, () => {
      const t = setInterval(() => {
        out.udpSent++;
        u.send(`u${i} ${seq++}`, port, addr);
      }, 100);
      timers.push(t);
    });
  }
  if (probeMs > 0) {
    const u = createSocket("udp4");
    let seq = 0;
    let last = 0;
    const seen = new Set<number>();
    u.on("message", (m) => {
      const n = Number(m.toString().split(" ")[1]);
      if (seen.has(n)) return;
      seen.add(n);
      const now = performance.now();
      out.probeAnswered++;
      if (last > 0) out.probeMaxGapMs = Math.max(out.probeMaxGapMs, Math.round(now - last));
      last = now;
    });
    u.on("error", () => undefined);
    u.bind(0, () => {
      const t = setInterval(() => {
        out.probeSent++;
        u.send(`probe ${seq++}`, port, addr);
      }, probeMs);
      timers.push(t);
    });
  }
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    const now = Date.now();
    for (let i = 0; i < nTcp; i++) if (!(now - (lastTcp[i] ?? 0) < 1500)) out.tcpStaleAtEnd++;
    for (let i = 0; i < nUdp; i++) if (!(now - (lastUdp[i] ?? 0) < 1500)) out.udpStaleAtEnd++;
    for (const t of timers) clearInterval(t);
    // The last echoes are in flight for a moment.
    setTimeout(() => {
      process.stdout.write(`${JSON.stringify(out)}\n`);
      for (const s of socks) s.destroy();
      process.exit(0);
    }, 300);
  };
  process.on("SIGTERM", finish);
  setTimeout(finish, seconds * 1000);
}

if (mode === "server") server(Number(args[0]));
else if (mode === "client")
  client(
    args[0] ?? "",
    Number(args[1]),
    Number(args[2]),
    Number(args[3]),
    Number(args[4]),
    Number(args[5] ?? 0),
  );
else {
  process.stderr.write(
    "usage: restart-peer server PORT | client ADDR PORT TCP UDP SECONDS [PROBE_MS]\n",
  );
  process.exit(2);
}
