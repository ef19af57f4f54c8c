// xterm.js and its stylesheet, loaded on demand (a separate chunk) when a console opens, so
// the main bundle stays small.
import "@xterm/xterm/css/xterm.css";
export { Terminal } from "@xterm/xterm";
