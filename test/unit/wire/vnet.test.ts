// src/wire/vnet.ts: struct virtio_net_hdr (include/uapi/linux/virtio_net.h), little-endian fields.
import t from "tap";
import * as vnet from "../../../src/wire/vnet.js";
import { build, parse } from "../../helpers/packet.js";

const h = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s/g, ""), "hex"));

// A TSO super-packet as a TUN hands it over: NEEDS_CSUM, GSO_TCPV4, hdr_len 66, gso_size 1448,
// csum_start 20, csum_offset 16.
const TSO = h("01 01 4200 a805 1400 1000");

t.test("a TSO header's fields are read little-endian", async (t) => {
  t.equal(vnet.flags(TSO, 0), vnet.F_NEEDS_CSUM);
  t.equal(vnet.gsoType(TSO, 0), vnet.GSO_TCPV4);
  t.equal(vnet.gsoSize(TSO, 0), 1448);
  t.equal(vnet.csumStart(TSO, 0), 20);
  t.equal(vnet.csumOffset(TSO, 0), 16);
  t.equal(TSO.length, vnet.LEN);
});

t.test("the ECN bit is masked off the GSO type", async (t) => {
  const b = TSO.slice();
  b[vnet.GSO_TYPE] = vnet.GSO_TCPV4 | vnet.GSO_ECN;
  t.equal(vnet.gsoType(b, 0), vnet.GSO_TCPV4);
  b[vnet.GSO_TYPE] = vnet.GSO_UDP_L4;
  t.equal(vnet.gsoType(b, 0), vnet.GSO_UDP_L4);
});

t.test("write produces the bytes read gives back, at an offset", async (t) => {
  const b = new Uint8Array(16).fill(0xaa);
  vnet.write(b, 3, vnet.F_NEEDS_CSUM, vnet.GSO_UDP_L4, 0x1234, 0xfedc, 0x0102, 0x0006);
  t.equal(
    Buffer.from(b).toString("hex"),
    ["aaaaaa", "01", "05", "3412", "dcfe", "0201", "0600", "aaaaaa"].join(""),
  );
  t.equal(vnet.gsoSize(b, 3), 0xfedc);
  t.equal(vnet.csumStart(b, 3), 0x0102);
  t.equal(vnet.csumOffset(b, 3), 6);
  t.equal(b[2], 0xaa, "the byte before is untouched");
  t.equal(b[13], 0xaa, "the byte after is untouched");
});

t.test("clear writes an all-zero header: no GSO, complete checksum", async (t) => {
  const b = new Uint8Array(12).fill(0xff);
  vnet.clear(b, 1);
  t.same([...b], [0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]);
  t.equal(vnet.flags(b, 1), 0);
  t.equal(vnet.gsoType(b, 1), vnet.GSO_NONE);
});

t.test("wire's header matches the one the test builder puts in front of a packet", async (t) => {
  const p = build({
    src: "10.99.0.2",
    dst: "192.0.2.10",
    sport: 1,
    dport: 2,
    payload: new Uint8Array(4000),
    vnet: { flags: vnet.F_NEEDS_CSUM, gsoType: vnet.GSO_TCPV4, gsoSize: 1448 },
  });
  const w = new Uint8Array(vnet.LEN);
  vnet.write(w, 0, vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 40, 1448, 20, 16);
  t.equal(Buffer.from(p.subarray(0, vnet.LEN)).toString("hex"), Buffer.from(w).toString("hex"));
  t.equal(parse(p).vnet?.hdrLen, 40);
});
