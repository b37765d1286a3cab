import { describe, expect, it } from 'vitest';
import { credentialAfterRefusal, firstCredential, type Credential } from '../../src/tokens/refresh-plan.js';

const rt = (refreshToken: string, from: 'shared' | 'own' | 'cached'): Credential => ({
  kind: 'refresh_token',
  refreshToken,
  from,
});
const GRANT: Credential = { kind: 'grant' };

describe('refresh plan: which credential a renewal presents', () => {
  it.each<[string, boolean, Parameters<typeof firstCredential>[1], Credential]>([
    ['a grant without refresh tokens', false, { shared: 's', own: 'o', cached: 'c' }, GRANT],
    ['nothing held', true, {}, GRANT],
    ["the fleet's shared entry first", true, { shared: 's', own: 'o', cached: 'c' }, rt('s', 'shared')],
    ["this replica's newest next", true, { own: 'o', cached: 'c' }, rt('o', 'own')],
    ["the cached token's last", true, { cached: 'c' }, rt('c', 'cached')],
  ])('first: %s', (_, canRefresh, held, expected) => {
    expect(firstCredential(canRefresh, held)).toEqual(expected);
  });

  it.each<[string, Parameters<typeof credentialAfterRefusal>[0], Credential]>([
    ['a sibling rotated it meanwhile: its newer one', { refused: new Set(['a']), shared: 'b' }, rt('b', 'shared')],
    ['the shared one is the refused one: the full grant', { refused: new Set(['a']), shared: 'a' }, GRANT],
    [
      'own one from renewing alone, when the shared one is spent',
      { refused: new Set(['a']), shared: 'a', ownFromRenewingAlone: 'o' },
      rt('o', 'own'),
    ],
    ['own one already refused: the full grant', { refused: new Set(['o']), ownFromRenewingAlone: 'o' }, GRANT],
    [
      'after two refusals, the full grant whatever else is held (at most three token requests)',
      { refused: new Set(['a', 'b']), shared: 'c', ownFromRenewingAlone: 'o' },
      GRANT,
    ],
    ['nothing else held: the full grant', { refused: new Set(['a']) }, GRANT],
  ])('after invalid_grant: %s', (_, after, expected) => {
    expect(credentialAfterRefusal(after)).toEqual(expected);
  });
});
