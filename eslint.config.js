// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'coverage/**', '.tmp/**'] },
  js.configs.recommended,
  // Type-aware: each TypeScript file is linted with the types of its tsconfig project.
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
  },
  {
    rules: {
      'no-console': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // Stated here, though recommendedTypeChecked has them: the two this configuration is for.
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      // An async function without await is how a Promise-returning interface is implemented so
      // that a synchronous throw still becomes a rejection (store.close(), adapters, stubs).
      '@typescript-eslint/require-await': 'off',
      // Passing on a rejection as it came (`reject(err)` with err: unknown) is not making one up.
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingUnknown: true }],
    },
  },
  {
    // Plain JavaScript (bench/, scripts/, this file) and the scripts' declarations are in no
    // tsconfig project: linted without type information.
    files: ['**/*.js', '**/*.mjs', '**/*.cjs', 'scripts/**/*.d.mts'],
    ...tseslint.configs.disableTypeChecked,
  },
  {
    // The CLI is the one place that talks to the terminal.
    files: ['src/cli.ts', 'src/demo/**/*.ts', 'bench/**/*.ts'],
    rules: { 'no-console': 'off' },
  },
);
