import { ensureTestPki } from './certs.js';

/** Runs once before all test files: the test PKI is shared, made on first use. */
export default function setup(): void {
  ensureTestPki();
}
