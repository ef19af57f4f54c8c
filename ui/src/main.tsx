// Vireo's browser UI: a token sign-in, then the app shell with navigation. Everything it shows
// comes from the public REST API (/v1) and the events websocket.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { getToken, setToken, setUnauthorizedHandler } from "./api/client";
import { startEvents, stopEvents, useEvents } from "./events";
import { CreateVm } from "./pages/CreateVm";
import { Dashboard } from "./pages/Dashboard";
import { Images } from "./pages/Images";
import { NetworkPage, Networks } from "./pages/Networks";
import { Operations } from "./pages/Operations";
import { Pools } from "./pages/Pools";
import { SignIn } from "./pages/SignIn";
import { VmList } from "./pages/VmList";
import { VmPage } from "./pages/VmPage";
import { href, onLinkClick, useRoute } from "./router";
import "./styles.css";

const NAV: [string, string][] = [
  ["/", "Dashboard"],
  ["/vms", "Virtual machines"],
  ["/operations", "Operations"],
  ["/images", "Images"],
  ["/storage", "Storage"],
  ["/networks", "Networks"],
];

function Page({ route }: { route: string }) {
  if (route === "/" || route === "") return <Dashboard />;
  if (route === "/vms") return <VmList />;
  if (route === "/vms/new") return <CreateVm />;
  const vm = /^\/vms\/([^/]+)$/.exec(route);
  if (vm) return <VmPage key={vm[1]} name={decodeURIComponent(vm[1])} />;
  if (route === "/operations") return <Operations />;
  if (route === "/images") return <Images />;
  if (route === "/storage") return <Pools />;
  if (route === "/networks") return <Networks />;
  const net = /^\/networks\/([^/]+)$/.exec(route);
  if (net) return <NetworkPage key={net[1]} name={decodeURIComponent(net[1])} />;
  return (
    <section>
      <h1>Not found</h1>
      <p>
        No page at {route}. <a href={href("/")}>Dashboard</a>
      </p>
    </section>
  );
}

function Shell({ onSignOut }: { onSignOut: () => void }) {
  const route = useRoute();
  const { connected } = useEvents();
  useEffect(() => {
    startEvents();
    return stopEvents;
  }, []);
  useEffect(() => {
    document.getElementById("main")?.focus();
  }, [route]);
  const current = (r: string) => (r === "/" ? route === "/" : route === r || route.startsWith(r + "/"));
  return (
    <div class="shell" onClick={onLinkClick}>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header>
        <a class="brand" href={href("/")}>
          Vireo
        </a>
        <nav aria-label="Main">
          <ul>
            {NAV.map(([r, label]) => (
              <li key={r}>
                <a href={href(r)} aria-current={current(r) ? "page" : undefined}>
                  {label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <span class={`dot ${connected ? "on" : ""}`} title={connected ? "live events connected" : "live events disconnected"} />
        <button type="button" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <main id="main" tabIndex={-1}>
        <Page route={route} />
      </main>
    </div>
  );
}

function App() {
  const [signedIn, setSignedIn] = useState(getToken() !== null);
  const signOut = () => {
    setToken(null);
    setSignedIn(false);
  };
  useEffect(() => setUnauthorizedHandler(signOut), []);
  return signedIn ? <Shell onSignOut={signOut} /> : <SignIn onSignedIn={() => setSignedIn(true)} />;
}

const root = document.getElementById("app");
if (root) render(<App />, root);
