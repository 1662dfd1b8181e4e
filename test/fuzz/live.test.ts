/**
 * `npm run fuzz:live [-- --packets N --pps R --transfer-bytes B --seed S --report FILE]`: the long
 * live fuzz of issue 8 (test/helpers/live-fuzz.ts) -- the real daemon in namespaces, by default
 * 10,000,000 random and mutated packets in both directions at 2 x 60,000 packets/s alongside
 * repeated 100 MB downloads and pings. Needs root, tcpreplay, tcpdump, tshark, socat, python3.
 * Namespaces are `tnfuzz-<pid>-*`, removed in teardown. Also run by `npm run fuzz`.
 */
import t from "tap";
import { liveFuzz, parseArgs } from "../helpers/live-fuzz.js";
import { missing } from "../netns/helpers/lab.js";

const reason = missing(["tcpreplay", "tcpdump", "tshark", "socat", "python3"]);
if (reason) t.plan(0, reason);
else {
  const opts = parseArgs(process.argv.slice(2), {
    packets: 10_000_000,
    pps: 60_000,
    transferBytes: 100_000_000,
    uniquePerSide: 500_000,
    seed: 8,
    prefix: "tnfuzz",
  });
  t.comment(`live fuzz: ${JSON.stringify(opts)}`);
  // Generating ~100k packets/s of CPU plus the replay at the given rate, with room for a busy machine.
  const timeout = Math.ceil((opts.packets / (2 * opts.pps)) * 3000) + 1_200_000;
  // Run directly (npm run fuzz:live) the root test has tap's 30 s default: lift it too.
  t.setTimeout(timeout + 60_000);
  const name = "the live fuzz: the daemon stays healthy and accounts for every packet";
  t.test(name, { timeout }, async (t) => {
    await liveFuzz(t, opts);
  });
}
