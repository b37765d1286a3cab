/**
 * When a 401 from the target may renew the token. Pure: no timers, no I/O; `now` is passed in.
 *
 * A fixed least interval between renewals got two things wrong: a partner that revoked a token
 * twice within the interval saw the second revocation go unrecovered, and a request got one
 * attempt or two depending on what happened in the seconds before. Renewals are judged by their
 * outcome instead. A renewal caused by a 401 on a path is judged by the next answer on that path
 * that carries another token (normally the replay):
 *   - accepted: the old token was revoked. Nothing is held against the next 401.
 *   - 401 again: the 401 was not about the token (a path that answers 401 whatever the token, or
 *     a partner that rejects every token). Renewals for that path, and for the key as a whole,
 *     back off exponentially; the key's backoff ends at the first accepted request on any path,
 *     the path's backoff when a renewal for it is proven right.
 * So a genuine revocation is recovered at once however often it happens, a path that always
 * answers 401 costs a few token requests a minute, and a partner that rejects every token gets a
 * trickle that grows to one every `maxMs`, never one token request per client request.
 */

export interface RenewalBackoff {
  /** Pause after the first futile renewal; doubled after each further one. */
  readonly initialMs: number;
  readonly maxMs: number;
  /** Paths remembered (the oldest is forgotten first): bounds memory whatever the paths. */
  readonly maxPaths: number;
}

export const DEFAULT_RENEWAL_BACKOFF: RenewalBackoff = { initialMs: 5_000, maxMs: 300_000, maxPaths: 256 };

export type UnauthorizedDecision =
  /** Renew the token now, then replay with the new one. */
  | 'renew'
  /** A newer token exists or is on its way: replay with it, nothing more is asked of the endpoint. */
  | 'replay'
  /** The 401 goes to the client as it came. */
  | 'pass';

/** What the provider knows of the token at the moment of the 401. */
export interface TokenSituation {
  /** The 401 came for the token that is cached now (not an older one, already replaced). */
  readonly isCurrent: boolean;
  /** A renewal is under way. */
  readonly renewing: boolean;
}

interface Streak {
  count: number;
  /** No 401-caused renewal before this moment. */
  until: number;
}

interface PathState extends Streak {
  /** Header of the token whose 401 on this path caused the renewal being judged. */
  judging: string | undefined;
}

export function futileBackoffMs(settings: RenewalBackoff, count: number): number {
  return Math.min(settings.maxMs, settings.initialMs * 2 ** Math.max(0, count - 1));
}

export class RenewalPolicy {
  readonly #settings: RenewalBackoff;
  readonly #key: Streak = { count: 0, until: 0 };
  /** Insertion order is age order: the first entry is the one forgotten when full. */
  readonly #paths = new Map<string, PathState>();

  constructor(settings: RenewalBackoff = DEFAULT_RENEWAL_BACKOFF) {
    this.#settings = settings;
  }

  /** The target answered 401 to `path` with the token whose header is `header`. */
  onUnauthorized(now: number, path: string, header: string, situation: TokenSituation): UnauthorizedDecision {
    const p = pathOf(path);
    const state = this.#paths.get(p);
    if (state?.judging !== undefined && state.judging !== header) {
      // The renewal this path caused did not help: the 401 is not about the token.
      state.judging = undefined;
      this.#futile(state, now);
      this.#futile(this.#key, now);
      return 'pass';
    }
    if (!situation.isCurrent || situation.renewing) return 'replay';
    if (now < this.#key.until || (state !== undefined && now < state.until)) return 'pass';
    this.#remember(p, state).judging = header;
    return 'renew';
  }

  /**
   * The target accepted a request with the token `header` (any answer but 401). Costs two field
   * reads unless a renewal is being judged or a backoff is on: it runs for every request.
   */
  onAccepted(path: string, header: string): void {
    if (this.#key.count !== 0) this.#key.count = this.#key.until = 0;
    if (this.#paths.size === 0) return;
    const p = pathOf(path);
    const state = this.#paths.get(p);
    // A renewal proven right (the old token was revoked) clears what the path had against it.
    if (state?.judging !== undefined && state.judging !== header) this.#paths.delete(p);
  }

  /** Whether 401-caused renewals are held back for the key as a whole (for status and tests). */
  backingOff(now: number): boolean {
    return now < this.#key.until;
  }

  #futile(streak: Streak, now: number): void {
    streak.count += 1;
    streak.until = now + futileBackoffMs(this.#settings, streak.count);
  }

  #remember(path: string, state: PathState | undefined): PathState {
    if (state !== undefined) return state;
    if (this.#paths.size >= this.#settings.maxPaths) {
      const oldest = this.#paths.keys().next().value as string;
      this.#paths.delete(oldest);
    }
    const fresh: PathState = { count: 0, until: 0, judging: undefined };
    this.#paths.set(path, fresh);
    return fresh;
  }
}

/** The path without its query: `/items?id=1` and `/items?id=2` are one resource for this purpose. */
function pathOf(path: string): string {
  const q = path.indexOf('?');
  return q === -1 ? path : path.slice(0, q);
}
