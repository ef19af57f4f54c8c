import { useState } from "preact/hooks";
import { api, call } from "../api/client";
import { useEventRefresh } from "../events";
import { ago, ErrorText, OpProgress, StateBadge, useData } from "../ui";

export function Operations() {
  const ops = useData(() => call(api.GET("/v1/operations")), [], 5000);
  useEventRefresh("", ops.reload);
  const [open, setOpen] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const rows = [...(ops.data ?? [])].sort((a, b) => b.created_at.localeCompare(a.created_at));

  async function cancel(id: string) {
    setError(null);
    try {
      await call(api.DELETE("/v1/operations/{id}", { params: { path: { id } } }));
    } catch (e) {
      setError(e);
    }
    ops.reload();
  }

  return (
    <section aria-labelledby="ops-page-title">
      <h1 id="ops-page-title">Operations</h1>
      <ErrorText error={error ?? ops.error} />
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th scope="col">Kind</th>
              <th scope="col">Target</th>
              <th scope="col">Status</th>
              <th scope="col">Progress</th>
              <th scope="col">Requestor</th>
              <th scope="col">Started</th>
              <th scope="col">
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {rows.map((o) => (
              <>
                <tr key={o.id}>
                  <td class="mono">{o.kind}</td>
                  <td>{o.target}</td>
                  <td>
                    <StateBadge state={o.status} />
                  </td>
                  <td>
                    <OpProgress op={o} />
                    {o.error && <span class="error small">{o.error}</span>}
                  </td>
                  <td class="small">{o.requestor}</td>
                  <td>{ago(o.created_at)}</td>
                  <td>
                    <button type="button" aria-expanded={open === o.id} onClick={() => setOpen(open === o.id ? null : o.id)}>
                      Log
                    </button>{" "}
                    {o.cancellable && o.status === "running" && (
                      <button type="button" class="danger" onClick={() => cancel(o.id)}>
                        Cancel
                      </button>
                    )}
                  </td>
                </tr>
                {open === o.id && (
                  <tr key={`${o.id}-log`}>
                    <td colSpan={7}>
                      <pre class="log">{o.log.join("\n") || "(empty)"}</pre>
                    </td>
                  </tr>
                )}
              </>
            ))}
          </tbody>
        </table>
        {ops.data?.length === 0 && <p class="muted">No operations.</p>}
      </div>
    </section>
  );
}
