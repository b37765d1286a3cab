import type { ServerResponse } from 'node:http';
import type { GuardTicket } from './partner-guard.js';
import type { Answers, RequestRecord } from './respond.js';
import { ResponseRelay } from './response-relay.js';

/**
 * The relay of an upstream with partner protection: reports the outcome of the whole forwarded
 * request to the guard (what the client gets, after any 401 replay and connection retry) before
 * relaying as usual. A subclass, so upstreams without protection relay at no extra cost.
 */
export class GuardedRelay extends ResponseRelay {
  readonly #ticket: GuardTicket;

  constructor(
    rec: RequestRecord,
    res: ServerResponse,
    answers: Answers,
    idleTimeoutMs: number,
    closed: () => void,
    ticket: GuardTicket,
  ) {
    super(rec, res, answers, idleTimeoutMs, closed);
    this.#ticket = ticket;
  }

  override onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode >= 200) this.#ticket.answered(statusCode, rawHeaders);
    return super.onHeaders(statusCode, rawHeaders, resume, statusText);
  }

  override onError(err: Error): void {
    // A client that left aborted the exchange: no verdict on the partner (done() says so).
    if (!this.clientGone) this.#ticket.failed();
    super.onError(err);
  }
}
