import type { AssertionInfo } from './assertion-file.js';
import type { TokenResponse } from './token-endpoint.js';

/**
 * How one credential set gets tokens: `obtain` runs the full grant; `refresh`, where the grant
 * has refresh tokens, renews with one (RFC 6749 §6).
 */
export interface Grant {
  readonly obtain: () => Promise<TokenResponse>;
  readonly refresh: ((refreshToken: string) => Promise<TokenResponse>) | undefined;
  /** With a platform-issued assertion file (RFC 7523): its claims now, never the assertion itself. */
  readonly assertion?: () => AssertionInfo;
}
