// Minimal history router for the app under /ui/ (vireod falls back to index.html for any
// extension-less path there, so deep links and reloads work).
import { useEffect, useState } from "preact/hooks";

const BASE = "/ui";

export function currentRoute(): string {
  const p = location.pathname.startsWith(BASE) ? location.pathname.slice(BASE.length) : "/";
  return p === "" ? "/" : p;
}

export function navigate(route: string): void {
  history.pushState(null, "", BASE + route);
  dispatchEvent(new PopStateEvent("popstate"));
}

export function href(route: string): string {
  return BASE + route;
}

export function useRoute(): string {
  const [route, setRoute] = useState(currentRoute());
  useEffect(() => {
    const f = () => setRoute(currentRoute());
    addEventListener("popstate", f);
    return () => removeEventListener("popstate", f);
  }, []);
  return route;
}

/** Same-origin link that navigates without reloading (ctrl/middle click still open a tab). */
export function onLinkClick(e: MouseEvent): void {
  const a = (e.target as HTMLElement).closest("a");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith(BASE + "/")) return;
  e.preventDefault();
  navigate(url.pathname.slice(BASE.length) + url.search);
}
