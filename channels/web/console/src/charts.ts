// Chart.js, registered with only what the console draws (tree-shaken by
// esbuild). No animation: a chart shows the latest numbers at once.
import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  Filler,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
  type ChartConfiguration,
} from "chart.js";
import { useEffect, useRef } from "preact/hooks";
import { h } from "preact";

Chart.register(BarController, BarElement, CategoryScale, Filler, Legend, LinearScale, LineController, LineElement, PointElement, Tooltip);

/**
 * A canvas drawn by Chart.js from config, redrawn when config changes.
 * label names the chart for screen readers; summary (text) is what a
 * chart cannot say to them, and stays in the page.
 */
export function ChartView(props: { config: ChartConfiguration; label: string; summary: string; testid?: string }) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const chart = useRef<Chart | null>(null);
  useEffect(() => {
    if (!canvas.current) return;
    const cfg: ChartConfiguration = { ...props.config, options: { animation: false as const, responsive: true, maintainAspectRatio: false, ...props.config.options } };
    if (chart.current && (chart.current.config as { type?: string }).type === props.config.type) {
      chart.current.data = cfg.data;
      chart.current.options = cfg.options as never;
      chart.current.update("none");
    } else {
      chart.current?.destroy();
      chart.current = new Chart(canvas.current, cfg);
    }
  }, [JSON.stringify(props.config.data)]);
  useEffect(() => () => chart.current?.destroy(), []);
  return h(
    "figure",
    { class: "chart", "data-testid": props.testid, "data-values": JSON.stringify(props.config.data.datasets.map((d) => d.data)) },
    h("div", { class: "chart-box" }, h("canvas", { ref: canvas, role: "img", "aria-label": props.label })),
    h("figcaption", null, props.summary),
  );
}
