/** Types of scripts/k8s-rules.mjs, for the tests. */
export declare const RULES_FILE: string;
export declare const OUTPUT_FILE: string;
/** The PrometheusRule text for the text of config/prometheus/alerts.yaml. */
export declare function prometheusRule(rulesText: string): string;
