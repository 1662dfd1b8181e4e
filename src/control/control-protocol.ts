/**
 * The control socket's protocol, shared by the server (control-socket.ts) and the client
 * (control-client.ts): newline-delimited JSON, one request line, answer lines with a "type".
 *
 *   {"cmd":"flows","host":"10.0.0.5","proto":"tcp","state":"ESTABLISHED","limit":100}
 *   {"cmd":"stats"}
 *   {"cmd":"ha","action":"role","state":"MASTER"}     (an HA pair's gateway, src/ha)
 *
 * Answers: "flow" (one per flow), "end" (after the last flow: how many matched), "stats", "ha", or
 * "error" (with a TunnatError code).
 */
import type { ProtocolName } from "../base/protocols.js";

export interface FlowFilter {
  /** Inside host (dotted quad). */
  host?: string;
  proto?: ProtocolName;
  /** TCP state name (ESTABLISHED, SYN_SENT, ...) or, for UDP and ICMP, UNREPLIED / REPLIED. */
  state?: string;
  limit?: number;
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
}

export type ControlRequest =
  | ({ cmd: "flows" } & FlowFilter)
  | { cmd: "stats" }
  | { cmd: "ha"; action: "role" | "status"; state?: string };
