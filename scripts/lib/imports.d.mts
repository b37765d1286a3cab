/** Types of scripts/lib/imports.mjs, for the tests. */
export interface ImportSpecifier {
  readonly spec: string;
  readonly dynamic: boolean;
}
export interface BareImport extends ImportSpecifier {
  readonly name: string;
  readonly file: string;
}
export declare function importSpecifiers(code: string): ImportSpecifier[];
export declare function isRelative(spec: string): boolean;
export declare function isBuiltin(spec: string): boolean;
export declare function packageName(spec: string): string;
export declare function reachableImports(entries: readonly string[]): { files: string[]; imports: BareImport[] };
