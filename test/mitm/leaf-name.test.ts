import { describe, expect, it } from 'vitest';
import { leafNameFor } from '../../src/mitm/leaf-name.js';

describe('leafNameFor', () => {
  it.each([
    // [host, wildcard suffixes, certificate name]
    ['a.partner.example', ['partner.example'], '*.partner.example'],
    ['r1234.partner.example', ['partner.example'], '*.partner.example'],
    ['a.b.partner.example', ['partner.example'], '*.b.partner.example'],
    ['partner.example', ['partner.example'], 'partner.example'],
    ['xpartner.example', ['partner.example'], 'xpartner.example'],
    ['a.partner.example.evil', ['partner.example'], 'a.partner.example.evil'],
    ['a.other.example', ['partner.example'], 'a.other.example'],
    ['a.example', ['example'], 'a.example'],
    ['a.b.example', ['example'], '*.b.example'],
    ['a.partner.example', [], 'a.partner.example'],
    ['localhost', ['partner.example'], 'localhost'],
  ])('names the leaf for %s under %j: %s', (host, suffixes, expected) => {
    expect(leafNameFor(host, suffixes)).toBe(expected);
  });
});
