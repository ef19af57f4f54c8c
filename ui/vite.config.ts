// Build config: the bundle is served by vireod at /ui (embedded with rust-embed), so every
// asset URL is under /ui/ and everything (fonts, CSS, xterm) is bundled: no external requests.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/ui/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0,
    sourcemap: false,
    chunkSizeWarningLimit: 600,
  },
});
