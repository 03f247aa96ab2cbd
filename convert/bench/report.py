"""The bench result as the plain-text table ``explaincam bench`` prints."""

from __future__ import annotations


def _ms(stats: dict | None) -> str:
    """Median and p95 columns of a timing summary (n/a when missing)."""
    return f"{stats['median']:9.2f} {stats['p95']:9.2f}" if stats else f"{'n/a':>9} {'n/a':>9}"


def _x(value) -> str:
    """A ratio as ``12.3x`` or n/a."""
    return f"{value:.1f}x" if value is not None else "n/a"


def format_table(r: dict) -> str:
    """The bench result as a plain-text table."""
    m = r["machine"]
    threads = [k for k in r["encoder_ms"]["int8_litert"]]
    clock = f" @ {m['mhz']} MHz" if m["mhz"] else ""
    lines = [f"explaincam bench: bundle {r['bundle']['name']} ({r['bundle']['encoder']}) on {m['cores']} cores, "
             f"{m['model']}{clock}; SIMD: {', '.join(m['simd']) or 'none seen'}",
             "", f"{'encoder (ms)':<28}{'threads':>8} {'median':>9} {'p95':>9}"]
    for kind, label in (("int8_litert", "int8 LiteRT"), ("float_tflite", "float TFLite"),
                        ("keras_float", "Keras float (predict)"), ("keras_float_graph", "Keras float (tf.function)")):
        for n in threads:
            lines.append(f"{label:<28}{n:>8} {_ms(r['encoder_ms'][kind].get(n))}")
    for n in threads:
        lines.append(f"int8 vs Keras predict / tf.function / float TFLite at {n} thread(s): "
                     f"{_x(r['encoder_int8_vs_keras'][n])} / {_x(r['encoder_int8_vs_keras_graph'][n])} / "
                     f"{_x(r['encoder_int8_vs_float_tflite'][n])}")
    lines += ["", f"{'decoder (ms per caption)':<37} {'median':>9} {'p95':>9}"]
    for kind, label in (("numpy_greedy", "numpy step decoder, greedy"), ("numpy_beam3", "numpy step decoder, beam 3"),
                        ("seed_beam3", "seed-style predict per step, beam 3")):
        lines.append(f"{label:<37} {_ms(r['decode_ms'][kind])}")
    lines.append(f"decoder_vs_seed {_x(r['decoder_vs_seed'])}; seed-style and numpy beams agree on "
                 f"{r['seed_agreement'] if r['seed_agreement'] is not None else 'n/a'} of frames")
    lines += ["", f"{'pipeline (ms per frame)':<37} {'median':>9} {'p95':>9}",
              f"{'familiarity check (when judged)':<37} {_ms(r['familiarity_ms'])}",
              f"{'caption (' + str(r['caption_ms']['threads']) + ' threads, camera stream)':<37} {_ms(r['caption_ms'])}",
              f"the stream holds each scene for {r['settings']['scene_hold_frames']} frames; familiarity judged on "
              + (f"{r['familiarity_judged_share']:.3f}" if r['familiarity_judged_share'] is not None else "n/a")
              + " of them (a new caption, or a second since the last)",
              f"caption_vs_encoder_decoder {r['caption_vs_encoder_decoder']:.3f} (end to end / (int8 encoder + greedy "
              f"decoder), side by side at {r['caption_ms']['threads']} threads); encode() / invoke(): "
              + ", ".join(f"{v:.3f} at {n}" for n, v in r["encoder_call_overhead"].items()),
              f"{'seed-style (Keras predict + beam 3)':<37} {_ms(r['seed_pipeline_ms'])}",
              f"pipeline_vs_seed {_x(r['pipeline_vs_seed'])}", ""]
    lines.append(f"capture loop, 1 thread: {r['captions_per_s']} captions/s idle; RSS capture: "
                 + (f"{r['rss_mb']['capture']['rss']} MB (peak {r['rss_mb']['capture']['hwm']} MB)"
                    if r["rss_mb"]["capture"] else "n/a"))
    lines += ["", f"explainer backends, all {r['explain_words']} words of one frame "
                  f"(cold/warm answer: gradcam + saliency, request sent -> answer received)",
              f"  {'':<30}" + "".join(f"{name:>14}" for name in r["backends"])]

    def row(label: str, value) -> str:
        return f"  {label:<30}" + "".join(f"{'n/a' if b is None or value(b) is None else value(b):>14}"
                                          for b in r["backends"].values())

    lines += [row("explainer peak RSS (MB)", lambda b: b["explainer_rss_mb"] and b["explainer_rss_mb"]["hwm"]),
              row("cold answer (s)", lambda b: b["cold_answer_s"]),
              row("warm answer (s)", lambda b: b["warm_answer_s"]),
              row("captions/s while explaining", lambda b: b["captions_per_s_explaining"]),
              row("explain_slowdown", lambda b: b["explain_slowdown"])]
    methods = next((list(b["explain_ms"]) for b in r["backends"].values() if b and b["explain_ms"]), [])
    for name in methods:
        lines.append(row(f"{name} (ms, warm / first)", lambda b: b["explain_ms"] and
                         f"{b['explain_ms'][name]:.0f}/{b['explain_ms_first_call'][name]:.0f}"))
    int8 = r.get("int8_explain")
    if int8:
        lines += ["", f"on the int8 model, all {int8['words']} words of one frame, no TensorFlow in the process "
                      f"(loaded: {', '.join(int8['tensorflow_modules']) or 'none'}): "
                  + ", ".join(f"{m} {int8['warm_ms'][m]:.0f} ms warm ({int8['warm_cpu_ms'][m]:.0f} ms CPU) / "
                              f"{int8['first_ms'][m]:.0f} first" for m in int8["warm_ms"])]
        for m, a in (int8.get("agreement_with_int8_occlusion") or {}).items():
            lines.append(f"  {m} map vs int8 occlusion map, Pearson per word ({a['words']} words): "
                         f"mean {a['mean']}, median {a['median']}, min {a['min']}")
    if r["macs"]:
        gops = ", ".join(f"{v} GOPS at {n} thread(s)" for n, v in r["encoder_gops"].items())
        lines += ["", f"encoder: {r['macs'] / 1e6:.1f} M MACs (TFLite graph: "
                      f"{r['macs_tflite'] / 1e6 if r['macs_tflite'] else float('nan'):.1f} M, "
                      f"{r['int8_delegate_partitions']} XNNPACK partition(s)); int8 achieves {gops}"]
    if r["int8_peak_gops"]:
        lines.append(f"practical int8 peak ({r['int8_peak_model']}): "
                     + ", ".join(f"{v} GOPS at {n} thread(s)" for n, v in r["int8_peak_gops"].items())
                     + "; encoder / peak: " + ", ".join(f"{v} at {n}" for n, v in
                                                        (r["encoder_vs_int8_peak"] or {}).items()))
    if r.get("history"):
        lines += ["", *history_lines(r["history"])]
    if r["null_reasons"]:
        lines += ["", "not measured:"] + [f"  {k}: {why}" for k, why in r["null_reasons"].items()]
    lines.append(f"\n({r['elapsed_s']} s)")
    return "\n".join(lines)


def history_lines(h: dict) -> list[str]:
    """The timeline's figures (``explaincam bench`` and ``explaincam history-bench``)."""
    c, d, s = h["capture"], h["demo_hour"], h["store"]
    rates = c["captions_per_s"]
    return [
        "timeline (history), side by side in one process:",
        f"  captions/s: off {rates['off']}, on at defaults {rates['defaults']} ({c['ratio_defaults']:.1%}), "
        f"keeping every event {rates['every_event']} ({c['ratio_every_event']:.1%}); "
        f"RSS growth {c['rss_growth_mb']} MB",
        f"  two hours of the demo stream ({d['frames']} captions): {d['events_seen']} events, {d['events_stored']} kept "
        f"({d['frames_kept']} with their lossless frame, mean {d['lossless_frame_bytes_mean']} B; thumbnail "
        f"{d['thumbnail_bytes_mean']} B); written: {d['bytes_written_first_hour'] / 1e6:.1f} MB the first hour, "
        f"{d['bytes_written_second_hour'] / 1e6:.1f} MB the second ({d['mb_written_per_day']} MB/day)",
        f"  {s['events']:,} stored events: {s['inserts_per_s']:,} inserts/s, {s['bytes_per_event']} bytes/event on disk "
        f"(no lossless frames), text query p50/p95 {s['text_query_ms']['p50']}/{s['text_query_ms']['p95']} ms, "
        f"similar-to p50/p95 {s['similar_query_ms']['p50']}/{s['similar_query_ms']['p95']} ms "
        f"(index {s['similar_index_mb']} MB, loaded in {s['similar_index_load_ms']} ms); CPU per query p95: "
        f"text {s['text_query_cpu_ms']['p95']} ms, similar-to {s['similar_query_cpu_ms']['p95']} ms "
        f"(load average {s['load_average'][0]:.1f})",
        explain_priority_line(h.get("explain_priority") or {}),
    ]


def explain_priority_line(p: dict) -> str:
    """A user's explain answer with background explanations on and off."""
    if "answer_ms" not in p:
        return f"  a user's explain answer with background explanations: n/a ({p.get('error', 'not measured')})"
    on, off = p["answer_ms"].get("background_on"), p["answer_ms"].get("background_off")
    return (f"  a user's explain answer (gradcam + saliency, all words), a new event every {p['event_every_s']:g} s: "
            f"median/p95 {off['p50'] if off else 'n/a'}/{off['p95'] if off else 'n/a'} ms without background "
            f"explanations, {on['p50'] if on else 'n/a'}/{on['p95'] if on else 'n/a'} ms with them "
            f"(ratio of medians {p['ratio_median']}; {p['events_explained_in_background']} events explained)")
