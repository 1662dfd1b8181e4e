// The TCP state machine alone (tcp-state.ts): RFC 6146 §3.5.2 shapes, as the NAT sees SYN, FIN
// and RST crossing in each direction. Counting and timers are tested through the table.
import t from "tap";
import { TCP_STATE_NAMES, TcpFlag, TcpState, tcpNext } from "../../../src/conntrack/tcp-state.js";

const { SYN, ACK, FIN, RST } = TcpFlag;
const OUT = true;
const IN = false;

/** Run segments [flags, outbound] from `start` and return the state names visited. */
function walk(start: number, segs: [number, boolean][]): string[] {
  let s = start;
  return segs.map(([f, o]) => {
    s = tcpNext(s, f, o);
    return TCP_STATE_NAMES[s];
  });
}

t.test("a normal open and close goes SYN_SENT, ESTABLISHED, FIN_OUT, FIN_BOTH", async (t) => {
  t.same(
    walk(TcpState.NONE, [
      [SYN, OUT],
      [SYN | ACK, IN],
      [ACK, OUT],
      [FIN | ACK, OUT],
      [ACK, IN],
      [FIN | ACK, IN],
      [ACK, OUT],
    ]),
    ["SYN_SENT", "ESTABLISHED", "ESTABLISHED", "FIN_OUT", "FIN_OUT", "FIN_BOTH", "FIN_BOTH"],
  );
});

t.test("a close started by the outside goes FIN_IN then FIN_BOTH", async (t) => {
  t.same(
    walk(TcpState.ESTABLISHED, [
      [FIN | ACK, IN],
      [ACK, OUT],
      [FIN | ACK, OUT],
    ]),
    ["FIN_IN", "FIN_IN", "FIN_BOTH"],
  );
});

t.test("a simultaneous open (crossing SYNs without ACK) establishes", async (t) => {
  t.same(
    walk(TcpState.NONE, [
      [SYN, OUT],
      [SYN, IN],
    ]),
    ["SYN_SENT", "ESTABLISHED"],
  );
});

t.test("an inbound SYN first goes SYN_RECV and the inside SYN-ACK establishes", async (t) => {
  t.same(
    walk(TcpState.NONE, [
      [SYN, IN],
      [SYN, IN],
      [SYN | ACK, OUT],
    ]),
    ["SYN_RECV", "SYN_RECV", "ESTABLISHED"],
  );
});

t.test("a retransmitted inside SYN and stray ACKs leave SYN_SENT alone", async (t) => {
  t.same(
    walk(TcpState.NONE, [
      [SYN, OUT],
      [SYN, OUT],
      [ACK, IN],
      [ACK, OUT],
    ]),
    ["SYN_SENT", "SYN_SENT", "SYN_SENT", "SYN_SENT"],
  );
});

t.test("a RST from either side moves every live state to RST", async (t) => {
  for (const s of [
    TcpState.NONE,
    TcpState.SYN_SENT,
    TcpState.SYN_RECV,
    TcpState.ESTABLISHED,
    TcpState.FIN_OUT,
    TcpState.FIN_IN,
    TcpState.FIN_BOTH,
    TcpState.RST,
  ]) {
    t.equal(tcpNext(s, RST, OUT), TcpState.RST, `${TCP_STATE_NAMES[s]} + out RST`);
    t.equal(tcpNext(s, RST | ACK, IN), TcpState.RST, `${TCP_STATE_NAMES[s]} + in RST`);
  }
});

t.test("after a RST any non-RST segment returns to ESTABLISHED (RFC 6146 TRANS)", async (t) => {
  t.equal(tcpNext(TcpState.RST, ACK, IN), TcpState.ESTABLISHED);
  t.equal(tcpNext(TcpState.RST, ACK, OUT), TcpState.ESTABLISHED);
  t.equal(tcpNext(TcpState.RST, RST, OUT), TcpState.RST);
});

t.test("an inside SYN after both FINs reopens the 5-tuple as SYN_SENT", async (t) => {
  t.equal(tcpNext(TcpState.FIN_BOTH, SYN, OUT), TcpState.SYN_SENT);
  t.equal(tcpNext(TcpState.FIN_BOTH, SYN, IN), TcpState.FIN_BOTH);
  t.equal(tcpNext(TcpState.FIN_BOTH, SYN | ACK, OUT), TcpState.FIN_BOTH);
});

t.test("a flow picked up mid-stream establishes on the remote's ACK only", async (t) => {
  t.equal(tcpNext(TcpState.NONE, ACK, OUT), TcpState.NONE);
  t.equal(tcpNext(TcpState.NONE, ACK, IN), TcpState.ESTABLISHED);
  t.equal(tcpNext(TcpState.NONE, 0, IN), TcpState.NONE);
});

t.test("every state has a display name", async (t) => {
  t.equal(TCP_STATE_NAMES.length, Object.keys(TcpState).length);
  for (const [name, v] of Object.entries(TcpState)) t.equal(TCP_STATE_NAMES[v], name);
});
