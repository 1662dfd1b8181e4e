/**
 * The control socket's protocol, shared by the server (control-socket.ts) and the client
 * (control-client.ts): newline-delimited JSON, one request line, answer lines with a "type".
 *
 *   {"cmd":"flows","host":"10.0.0.5","proto":"tcp","state":"ESTABLISHED","limit":100}
 *   {"cmd":"stats"}
 *   {"cmd":"delete","host":"10.0.0.5"}          (or "all":true; answered by "end" with "deleted")
 *   {"cmd":"follow","nat":"203.0.113.1:41234"}  (open-ended: "following", then "event" lines)
 *
 *   {"cmd":"ha","action":"role","state":"MASTER"}     (an HA pair's gateway, src/ha)
 *   {"cmd":"restart"}   (a handover restart; answered by "restart" with the successor's pid)
 *
 * Answers: "flow" (one per flow), "end" (after the last flow: how many matched), "stats", "ha",
 * "following" then "event" (create/destroy, as `conntrack -E`) and "lost" (events a slow reader
 * missed, with their count), or "error" (with a TunnatError code).
 */
import type { ProtocolName } from "../base/protocols.js";

export interface FlowFilter {
  /** Inside host (dotted quad). */
  host?: string;
  proto?: ProtocolName;
  /** TCP state name (ESTABLISHED, SYN_SENT, ...) or, for UDP and ICMP, UNREPLIED / REPLIED. */
  state?: string;
  /** Remote (destination) address, optionally "ADDR:PORT". */
  dst?: string;
  /** Outside (NAT) address, optionally "ADDR:PORT": who was 203.0.113.1:41234? */
  nat?: string;
  limit?: number;
  /** delete: every flow (no other filter needed). */
  all?: boolean;
}

export interface FlowRecord {
  type: "flow";
  proto: string;
  state: string;
  /** Seconds until the flow expires if idle. */
  timeout: number;
  insideAddr: string;
  insidePort: number;
  outsideAddr: string;
  outsidePort: number;
  remoteAddr: string;
  remotePort: number;
  pktsOut: number;
  bytesOut: number;
  pktsIn: number;
  bytesIn: number;
  replied: boolean;
  inbound: boolean;
  /** Seconds since the flow was created. */
  age?: number;
}

export type ControlRequest =
  | ({ cmd: "flows" | "delete" | "follow" } & FlowFilter)
  | { cmd: "stats" }
  | { cmd: "restart" }
  | { cmd: "ha"; action: "role" | "status"; state?: string };
