import { defineConfig } from 'vite';

// The built page is served by the relay itself (DATASTREAM_STATIC_DIR), so it talks to the same
// origin: relative paths, nothing to configure.
export default defineConfig({
  base: './',
  build: { outDir: 'dist', emptyOutDir: true, target: 'es2022' },
});
