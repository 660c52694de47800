// @ts-check
// typescript-eslint with type information: the recommended type-checked rules (floating and
// misused promises, awaiting non-promises, unsafe any, unbound methods, ...) plus a few of ours.
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  { ignores: ['dist/', 'native/', 'node_modules/', 'bench-out/'] },
  {
    files: ['**/*.ts'],
    extends: [js.configs.recommended, tseslint.configs.recommendedTypeChecked],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      eqeqeq: 'error',
      // A promise returned from inside try without await escapes its catch and finally.
      '@typescript-eslint/return-await': ['error', 'error-handling-correctness-only'],
      'no-throw-literal': 'off',
      '@typescript-eslint/only-throw-error': 'error',
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          // node:test registers these and awaits them itself.
          allowForKnownSafeCalls: [
            {
              from: 'package',
              package: 'node:test',
              name: ['describe', 'it', 'test', 'suite', 'before', 'after', 'beforeEach', 'afterEach'],
            },
          ],
        },
      ],
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_', ignoreRestSiblings: true },
      ],
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
      // `x!` on indexed access documents intent; without noUncheckedIndexedAccess the rule calls
      // every one of them unnecessary. Not a defect either way.
      '@typescript-eslint/no-unnecessary-type-assertion': 'off',
      // An async function without await is how we turn a throw into a rejection; not a defect.
      '@typescript-eslint/require-await': 'off',
      // require() is used on purpose: lazy loading (pino, completion) and the addon by path.
      '@typescript-eslint/no-require-imports': 'off',
    },
  },
  {
    // Tests read the CLI's JSON output with JSON.parse and walk it: `any` there is the point.
    files: ['test/**/*.ts'],
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
    },
  },
);
