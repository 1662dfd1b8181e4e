import t from "tap";
import {
  bitRate,
  bytes,
  iperfTable,
  metricsTable,
  parseIperfJson,
  parsePing,
} from "../../../src/cli/demo-story.js";

t.test("units: bytes and bit rates with three significant digits", async (t) => {
  t.equal(bytes(999), "999 B");
  t.equal(bytes(20_000_000), "20.0 MB");
  t.equal(bytes(1_513_000_000), "1.51 GB");
  t.equal(bitRate(4_026_000_000), "4.03 Gbit/s");
});

t.test("ping and iperf3 summaries are read from their own output", async (t) => {
  const p = parsePing(
    "3 packets transmitted, 3 received, 0% packet loss, time 402ms\nrtt min/avg/max/mdev = 0.381/3.443/9.455/4.2 ms\n",
  );
  t.same(p, { sent: 3, received: 3, rttMinMs: 0.381, rttAvgMs: 3.443, rttMaxMs: 9.455 });
  const i = parseIperfJson(
    JSON.stringify({
      end: {
        sum_sent: { seconds: 3, bytes: 1.51e9, bits_per_second: 4.03e9, retransmits: 96 },
        sum_received: { bytes: 1.5e9, bits_per_second: 4.02e9 },
      },
    }),
  );
  t.ok(i);
  if (i) t.match(iperfTable(i), /TCP retransmits[\s\S]*sent by p1\s+1\.51 GB\s+4\.03 Gbit\/s\s+96/);
  t.equal(parseIperfJson("not json"), null);
});

t.test("the metrics table has units, rounds its numbers and explains flows", async (t) => {
  const text = [
    "tunnat_out_to_destination_bytes_total 1570000000",
    "tunnat_out_to_destination_packets_total 1043681",
    'tunnat_flows{protocol="tcp"} 3',
    'tunnat_flows{protocol="icmp"} 1',
    "tunnat_active_connections 0",
    "tunnat_peak_bytes_per_second 638332.8233951719",
    'tunnat_dropped_packets_total{reason="malformed_ip"} 0',
    'tunnat_inbound_refused_packets_total{reason="unsolicited"} 4',
    "process_start_time_seconds 1000",
    "tunnat_event_loop_busy_seconds_total 2.5",
  ].join("\n");
  const out = metricsTable(text, 1010);
  t.match(out, /1\.57 GB in 1,043,681 packets/);
  t.match(out, /638 kB\/s/, "the peak is rounded, with its unit");
  t.notMatch(out, /638332/);
  t.match(out, /3: 0 established, 3 closed/);
  t.match(out, /unsolicited inbound: 4/);
  t.match(out, /2\.5 s of 10\.0 s up \(25 %\)/);
});
