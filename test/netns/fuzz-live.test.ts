/**
 * A short bounded run of the live fuzz (test/helpers/live-fuzz.ts; the long one is
 * `npm run fuzz:live`): 200,000 random and mutated packets in both directions through the real
 * daemon alongside 20 MB downloads and pings, then the daemon's health, RSS, byte-exact
 * downloads, checksums of what it emitted and the drop accounting. Needs root, tcpreplay,
 * tcpdump, tshark, socat, python3. Namespaces are `tnlfz-<pid>-*`, removed in teardown.
 */
import t from "tap";
import { liveFuzz } from "../helpers/live-fuzz.js";
import { missing } from "./helpers/lab.js";

const reason = missing(["tcpreplay", "tcpdump", "tshark", "socat", "python3"]);
if (reason) t.plan(0, reason);
else
  t.test(
    "a short live fuzz: the daemon stays healthy and accounts for every packet",
    { timeout: 600_000 },
    async (t) => {
      await liveFuzz(t, {
        packets: 200_000,
        pps: 50_000,
        transferBytes: 20_000_000,
        uniquePerSide: 50_000,
        seed: 1,
        prefix: "tnlfz",
      });
    },
  );
