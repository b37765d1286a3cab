import { TokenError } from '../errors.js';
import type { Token } from './token.js';

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref?.());
}

/** Bounds a wait for a token; on time-out, the last failure (if any) says why. */
export function withDeadline(
  pending: Promise<Token>,
  ms: number,
  lastError: () => TokenError | undefined,
): Promise<Token> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(lastError() ?? new TokenError('timeout', `no token within ${ms} ms`));
    }, ms);
    pending.then(
      (token) => {
        clearTimeout(timer);
        resolve(token);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}
