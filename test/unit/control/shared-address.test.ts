import t from "tap";
import { ErrorCode, exitCodeFor, TunnatError } from "../../../src/base/errors.js";
import {
  MIN_DEFAULT_PORTS,
  parsePortRange,
  reservedRange,
  sharedScript,
} from "../../../src/control/shared-address.js";
import { ip } from "../../helpers/packet.js";

function errorOf(fn: () => unknown): TunnatError {
  try {
    fn();
  } catch (e) {
    if (e instanceof TunnatError) return e;
    throw e;
  }
  throw new Error("expected a TunnatError");
}

t.test("ip_local_port_range is read as two numbers", async (t) => {
  t.same(parsePortRange("32768\t60999\n"), [32768, 60999]);
  t.same(parsePortRange("1024 65535"), [1024, 65535]);
  t.equal(parsePortRange("60999 32768"), null);
  t.equal(parsePortRange("x"), null);
});

t.test("the default range lies above the host's ephemeral ports", async (t) => {
  t.same(reservedRange([32768, 60999], null, "--ports"), [61000, 65535]);
  // Too few above: below it, from 1024.
  t.same(reservedRange([20000, 65000], null, "--ports"), [1024, 19999]);
  const e = errorOf(() => reservedRange([1024, 65535], null, "--ports"));
  t.equal(e.code, ErrorCode.Config);
  t.match(e.message, new RegExp(`fewer than ${MIN_DEFAULT_PORTS} ports`));
});

t.test("a given range that overlaps the ephemeral ports exits 2 naming it", async (t) => {
  const e = errorOf(() => reservedRange([32768, 60999], [60000, 62000], "--ports"));
  t.equal(exitCodeFor(e.code), 2);
  t.match(
    e.message,
    /^invalid --ports "60000-62000": .*ip_local_port_range 32768-60999.*61000-65535/,
  );
  t.same(reservedRange([32768, 60999], [61000, 61999], "--ports"), [61000, 61999]);
  t.same(reservedRange([32768, 60999], [20000, 32767], "--ports"), [20000, 32767]);
});

t.test("the nft table maps the range and the forwards, and nothing else", async (t) => {
  const s = sharedScript(
    { shared: ip("172.31.0.10"), internal: ip("169.254.77.2"), portLo: 61000, portHi: 65535 },
    4242,
    [
      { proto: 6, port: 443 },
      { proto: 17, port: 53 },
      { proto: 6, port: 22 },
    ],
  );
  t.match(s, /^table ip tunnat_shared_4242 \{/);
  t.match(
    s,
    /ip daddr 172\.31\.0\.10 meta l4proto \{ tcp, udp \} th dport 61000-65535 dnat to 169\.254\.77\.2/,
  );
  t.match(s, /ip daddr 172\.31\.0\.10 tcp dport \{ 22, 443 \} dnat to 169\.254\.77\.2/);
  t.match(s, /ip daddr 172\.31\.0\.10 udp dport \{ 53 \} dnat to 169\.254\.77\.2/);
  t.match(s, /ip saddr 169\.254\.77\.2 snat to 172\.31\.0\.10/);
  t.match(s, /ct state != \{ established, related \} counter name "shared_unsolicited" drop/);
  t.notMatch(s, /icmp/, "ICMP to and from the host is never touched");
  const none = sharedScript(
    { shared: ip("172.31.0.10"), internal: ip("169.254.77.2"), portLo: 61000, portHi: 65535 },
    4242,
    [],
  );
  t.notMatch(none, /tcp dport \{/, "no forward rules without forwards");
});
