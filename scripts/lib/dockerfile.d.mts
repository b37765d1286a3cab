/** Types of scripts/lib/dockerfile.mjs, for the tests. */
export interface Stage {
  readonly index: number;
  readonly name: string;
  readonly base: string;
  readonly parent: string | undefined;
  readonly workdir: string;
  readonly env: ReadonlyMap<string, string>;
  readonly user: string;
  readonly entrypoint: { readonly exec: boolean; readonly words: readonly string[] } | undefined;
  readonly cmd: { readonly exec: boolean; readonly words: readonly string[] } | undefined;
  readonly healthcheck:
    | { readonly exec: boolean; readonly words: readonly string[]; readonly options: Readonly<Record<string, string>> }
    | undefined;
  readonly expose: readonly string[];
  readonly inherited: { readonly workdir: string; readonly env: ReadonlyMap<string, string> } | undefined;
  readonly steps: readonly (
    | { readonly kind: 'workdir'; readonly line: number; readonly path: string }
    | { readonly kind: 'env'; readonly line: number; readonly env: ReadonlyMap<string, string> }
    | {
        readonly kind: 'copy';
        readonly line: number;
        readonly from: string;
        readonly chown: string;
        readonly chmod: string;
        readonly dest: string;
        readonly sources: readonly string[];
      }
    | {
        readonly kind: 'run';
        readonly line: number;
        readonly user: string;
        readonly exec: boolean;
        readonly words: readonly string[];
      }
  )[];
}
export interface IgnorePattern {
  readonly negate: boolean;
  readonly regexp: RegExp;
  readonly literalPrefix: string;
}
export declare function logicalLines(text: string): { line: number; text: string }[];
export declare function shellWords(text: string): string[];
export declare function substitute(text: string, vars: ReadonlyMap<string, string>): string;
export declare function parseDockerfile(text: string): Stage[];
export declare function shQuote(word: string): string;
export declare function plan(stages: readonly Stage[]): string;
export declare function parseDockerignore(text: string): IgnorePattern[];
export declare function isExcluded(patterns: readonly IgnorePattern[], relPath: string): boolean;
export declare function copyContext(src: string, dst: string, patterns: readonly IgnorePattern[]): void;
export declare function unresolvedImports(appDir: string): string[];
