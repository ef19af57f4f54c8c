// Small shared components: state badges, meters, progress bars, a confirmation dialog, error
// messages, and a data-loading hook with optional polling.
import type { ComponentChildren } from "preact";
import { useCallback, useEffect, useId, useRef, useState } from "preact/hooks";
import { ApiFailure, type Operation } from "./api/client";

export function StateBadge({ state }: { state: string }) {
  return <span class={`badge state-${state}`}>{state}</span>;
}

export function Meter({ label, used, total, text }: { label: string; used: number; total: number; text: string }) {
  const pct = total > 0 ? Math.min(100, Math.round((used / total) * 100)) : 0;
  return (
    <div class="meter">
      <div class="meter-head">
        <span>{label}</span>
        <span>{text}</span>
      </div>
      <div class="bar" role="meter" aria-label={label} aria-valuemin={0} aria-valuemax={100} aria-valuenow={pct}>
        <div class={`fill ${pct > 90 ? "hot" : ""}`} style={{ width: `${pct}%` }} />
      </div>
    </div>
  );
}

export function OpProgress({ op }: { op: Operation }) {
  const pct =
    op.progress.percent ??
    (op.progress.bytes_total ? ((op.progress.bytes_done ?? 0) / op.progress.bytes_total) * 100 : null);
  const shown = op.status === "succeeded" ? 100 : pct;
  return (
    <div class="op-progress">
      {shown === null ? (
        <progress aria-label={`${op.kind} progress`} />
      ) : (
        <progress aria-label={`${op.kind} progress`} max={100} value={shown} />
      )}
      <span class="muted">
        {op.status === "running" ? (op.progress.stage ?? (shown === null ? "" : `${Math.round(shown)}%`)) : op.status === "succeeded" ? "done" : op.status}
      </span>
    </div>
  );
}

export function ErrorText({ error }: { error: unknown }) {
  if (!error) return null;
  const msg = error instanceof ApiFailure ? error.message : String(error);
  return (
    <p class="error" role="alert">
      {msg}
    </p>
  );
}

/** A modal confirmation (native <dialog>: focus trap and Escape for free). */
export function Confirm({
  open,
  title,
  children,
  confirmLabel,
  onConfirm,
  onCancel,
}: {
  open: boolean;
  title: string;
  children: ComponentChildren;
  confirmLabel: string;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) d.close();
  }, [open]);
  return (
    <dialog ref={ref} aria-labelledby={titleId} onCancel={(e) => (e.preventDefault(), onCancel())}>
      <h2 id={titleId}>{title}</h2>
      <div>{children}</div>
      <div class="actions">
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
        <button type="button" class="danger" onClick={onConfirm}>
          {confirmLabel}
        </button>
      </div>
    </dialog>
  );
}

/** Loads data, reloads on `reload()`, and every `pollMs` when given. */
export function useData<T>(load: () => Promise<T>, deps: unknown[], pollMs?: number) {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  const live = useRef(true);
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const reload = useCallback(() => {
    load().then(
      (d) => {
        if (!live.current) return;
        setData(d);
        setError(null);
      },
      (e) => live.current && setError(e),
    );
  }, deps);
  useEffect(() => {
    live.current = true;
    reload();
    const t = pollMs ? window.setInterval(reload, pollMs) : undefined;
    return () => {
      live.current = false;
      window.clearInterval(t);
    };
  }, [reload, pollMs]);
  return { data, error, reload };
}

export function ago(iso: string): string {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

/** The API error when it names `field` (its ErrorBody `field`), else null. */
export function errorFor(error: unknown, field: string): ApiFailure | null {
  return error instanceof ApiFailure && error.field === field ? error : null;
}

/** True when the error is about one of `fields` (shown next to it, not as a general alert). */
export function isFieldError(error: unknown, fields: string[]): boolean {
  return error instanceof ApiFailure && error.field !== null && fields.includes(error.field);
}

/**
 * The API's message next to the form field it is about. `id` scopes the element id
 * (`err-<id>`) so several forms on one page do not collide; inputs point at it with
 * `invalidProps`.
 */
export function FieldError({ error, field, id }: { error: unknown; field: string; id?: string }) {
  const e = errorFor(error, field);
  if (!e) return null;
  return (
    <p id={`err-${id ?? field}`} class="error field-error" role="alert">
      {e.message}
    </p>
  );
}

/** aria-invalid/aria-describedby for an input whose field the error is about. */
export function invalidProps(error: unknown, field: string, id?: string) {
  return errorFor(error, field) ? { "aria-invalid": true, "aria-describedby": `err-${id ?? field}` } : {};
}

/** A modal form (native <dialog>): `onSubmit` runs on submit; Escape or Cancel call `onCancel`. */
export function FormDialog({
  open,
  title,
  children,
  submitLabel,
  busy,
  onSubmit,
  onCancel,
}: {
  open: boolean;
  title: string;
  children: ComponentChildren;
  submitLabel: string;
  busy?: boolean;
  onSubmit: () => void;
  onCancel: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) d.close();
  }, [open]);
  return (
    <dialog ref={ref} aria-labelledby={titleId} onCancel={(e) => (e.preventDefault(), onCancel())}>
      <form
        class="dialog-form"
        noValidate
        onSubmit={(e) => {
          e.preventDefault();
          onSubmit();
        }}
      >
        <h2 id={titleId}>{title}</h2>
        {children}
        <div class="actions">
          <button type="button" onClick={onCancel}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy}>
            {submitLabel}
          </button>
        </div>
      </form>
    </dialog>
  );
}

export const SIZE_UNITS = { MiB: 1024 * 1024, GiB: 1024 * 1024 * 1024 } as const;
export type SizeUnit = keyof typeof SIZE_UNITS;

/** A size typed as a number and a unit → bytes; NaN when it is not a number (the API checks the rest). */
export function toBytes(value: string, unit: SizeUnit): number {
  if (value.trim() === "") return NaN;
  const n = Number(value);
  return Number.isFinite(n) ? Math.round(n * SIZE_UNITS[unit]) : NaN;
}

/** A field error found before asking the API (e.g. a size that is not a number), shown like the API's. */
export function localFieldError(field: string, message: string): ApiFailure {
  return new ApiFailure(400, "invalid_request", message, field);
}
