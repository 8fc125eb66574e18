package bench;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.core.StreamWriteFeature;
import com.fasterxml.jackson.core.json.JsonReadFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeType;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;

/**
 * The worker's job for one record, without Kafka: check the event as the worker does (the same
 * dead-letter reasons), softmax at the topic's temperature, decide, label, and lay the output
 * out as the worker does (the input's fields, then the decision's, in the worker's order).
 */
final class Router {
  static final String WORKER_VERSION = "kstreams-bench";
  // The worker's defaults (processing.max_event_bytes, max_classes; events.MAX_DEPTH).
  static final int MAX_EVENT_BYTES = 1_048_576;
  static final int MAX_CLASSES = 10_000;
  static final int MAX_DEPTH = 128;

  /** One input topic's routing policy (the worker's [topics."..."] table). */
  record Policy(double temperature, double minMargin, Double minTop1, List<String> labels) {
    static Policy of(JsonNode node) {
      List<String> labels = null;
      JsonNode l = node.get("labels");
      if (l != null && l.isArray()) {
        labels = new ArrayList<>();
        for (JsonNode s : l) {
          labels.add(s.asText());
        }
      }
      JsonNode top1 = node.get("min_top1");
      return new Policy(
          node.get("temperature").asDouble(),
          node.get("min_margin").asDouble(),
          top1 == null || top1.isNull() ? null : top1.asDouble(),
          labels);
    }
  }

  /** Where a record goes: "routed", "escalated" or "dead_letter" (then value is the input). */
  record Outcome(String destination, byte[] value, String reason) {}

  // Shortest round-trip doubles on output (as orjson writes them), fast parsing on input.
  private static final ObjectMapper STRICT =
      JsonMapper.builder()
          .enable(StreamWriteFeature.USE_FAST_DOUBLE_WRITER)
          .enable(StreamReadFeature.USE_FAST_DOUBLE_PARSER)
          .build();
  // Only to tell a NaN or Infinity token (non_finite_number) from other bad JSON (not_json).
  private static final ObjectMapper LENIENT =
      JsonMapper.builder().enable(JsonReadFeature.ALLOW_NON_NUMERIC_NUMBERS).build();

  private final Map<String, Policy> policies;

  Router(Map<String, Policy> policies) {
    this.policies = policies;
  }

  static final class Dead extends Exception {
    final String reason;

    Dead(String reason) {
      super(reason, null, false, false);
      this.reason = reason;
    }
  }

  Outcome route(String topic, int partition, long offset, long timestamp, byte[] value) {
    try {
      return score(topic, partition, offset, timestamp, value);
    } catch (Dead d) {
      return new Outcome("dead_letter", value, d.reason);
    }
  }

  private Outcome score(String topic, int partition, long offset, long timestamp, byte[] raw)
      throws Dead {
    Policy policy = policies.get(topic);
    ObjectNode doc = decode(raw);
    ArrayNode logitsNode = (ArrayNode) doc.get("logits");
    int n = logitsNode.size();
    JsonNode eventLabels = doc.get("labels");
    boolean hasEventLabels = eventLabels != null && !eventLabels.isNull();
    if (!hasEventLabels && policy.labels() != null && policy.labels().size() != n) {
      throw new Dead("topic_labels_mismatch");
    }
    double[] x = new double[n];
    double top = Double.NEGATIVE_INFINITY;
    for (int i = 0; i < n; i++) {
      JsonNode v = logitsNode.get(i);
      x[i] = v.isNull() ? Double.NEGATIVE_INFINITY : v.doubleValue();
      if (x[i] > top) {
        top = x[i];
      }
    }
    if (top == Double.POSITIVE_INFINITY) {
      throw new Dead("pos_inf_logit");
    }
    if (top == Double.NEGATIVE_INFINITY) {
      throw new Dead("no_finite_logit");
    }
    double t = policy.temperature();
    double[] z = new double[n];
    double[] e = new double[n];
    int best = -1;
    for (int i = 0; i < n; i++) {
      double gap = x[i] - top;
      // A gap past the double range, at a huge temperature, as the worker takes it.
      z[i] = gap == Double.NEGATIVE_INFINITY && x[i] != Double.NEGATIVE_INFINITY
          ? x[i] / t - top / t
          : gap / t;
      e[i] = Math.exp(z[i]);
      if (best < 0 && x[i] == top) {
        best = i; // the first largest logit, as the worker picks the top class
      }
    }
    double total = FSum.sum(e, n);
    double[] p = new double[n];
    double[] spread = new double[n];
    int masked = 0;
    for (int i = 0; i < n; i++) {
      p[i] = e[i] / total;
      if (e[i] > 0.0) {
        spread[i - masked] = e[i] * -z[i];
      } else {
        masked++;
      }
    }
    // log1p of the sum less the maximum's exp(0) = 1: a confident event keeps its digits.
    double[] others = new double[n];
    for (int i = 0, k = 0; i < n; i++) {
      if (i != best) {
        others[k++] = e[i];
      }
    }
    double entropy = Math.log1p(FSum.sum(others, n - 1)) + FSum.sum(spread, n - masked) / total;
    double top1 = p[best];
    double top2 = Double.NEGATIVE_INFINITY;
    for (int i = 0; i < n; i++) {
      if (i != best && p[i] > top2) {
        top2 = p[i];
      }
    }
    double margin = top1 - top2;
    String reason = null;
    if (margin < policy.minMargin()) {
      reason = "low_margin";
    } else if (policy.minTop1() != null && top1 < policy.minTop1()) {
      reason = "low_top1";
    }
    String decision = reason == null ? "routed" : "escalated";
    String label;
    if (hasEventLabels) {
      label = eventLabels.get(best).textValue();
    } else if (policy.labels() != null) {
      label = policy.labels().get(best);
    } else {
      label = Integer.toString(best);
    }
    doc.put("decision", decision);
    doc.put("label", label);
    doc.put("class_index", best);
    ArrayNode probs = doc.putArray("probabilities");
    for (int i = 0; i < n; i++) {
      probs.add(p[i]);
    }
    doc.put("top1", top1);
    doc.put("top2", top2);
    doc.put("margin", margin);
    doc.put("entropy", entropy);
    doc.put("temperature", t);
    ObjectNode pol = doc.putObject("policy");
    pol.put("min_margin", policy.minMargin());
    if (policy.minTop1() == null) {
      pol.putNull("min_top1");
    } else {
      pol.put("min_top1", policy.minTop1().doubleValue());
    }
    if (reason == null) {
      doc.putNull("reason");
    } else {
      doc.put("reason", reason);
    }
    ObjectNode source = doc.putObject("source");
    source.put("topic", topic);
    source.put("partition", partition);
    source.put("offset", offset);
    source.put("timestamp", timestamp);
    doc.put("config_version", "");
    doc.put("worker_version", WORKER_VERSION);
    try {
      return new Outcome(decision, STRICT.writeValueAsBytes(doc), null);
    } catch (JsonProcessingException ex) {
      throw new IllegalStateException(ex);
    }
  }

  /** The input's JSON object, or Dead with the worker's reason for refusing it. */
  private static ObjectNode decode(byte[] raw) throws Dead {
    if (raw == null) {
      throw new Dead("not_json");
    }
    if (raw.length > MAX_EVENT_BYTES) {
      throw new Dead("payload_too_large");
    }
    JsonNode doc;
    try {
      doc = STRICT.readTree(raw);
    } catch (IOException ex) {
      throw new Dead(unreadable(raw));
    }
    if (doc == null || doc.isMissingNode()) {
      throw new Dead("not_json");
    }
    check(doc, 1);
    if (!(doc instanceof ObjectNode obj)) {
      throw new Dead("not_object");
    }
    JsonNode logits = obj.get("logits");
    if (logits != null && logits.isArray() && logits.size() > MAX_CLASSES) {
      throw new Dead("too_many_classes");
    }
    // Field by field in the event model's order, as its validation reports the first problem.
    JsonNode id = obj.get("id");
    if (id == null || id.isNull()) {
      throw new Dead("missing_field");
    }
    if (!id.isTextual()) {
      throw new Dead("wrong_type");
    }
    if (logits == null || logits.isNull()) {
      throw new Dead("missing_field");
    }
    if (!logits.isArray()) {
      throw new Dead("wrong_type");
    }
    for (JsonNode v : logits) {
      if (!(v.isNumber() || v.isNull())) {
        throw new Dead("wrong_type");
      }
    }
    if (logits.size() < 2) {
      throw new Dead("too_few_classes");
    }
    JsonNode labels = obj.get("labels");
    if (labels != null && !labels.isNull()) {
      if (!labels.isArray()) {
        throw new Dead("wrong_type");
      }
      for (JsonNode s : labels) {
        if (!s.isTextual()) {
          throw new Dead("wrong_type");
        }
      }
      if (labels.size() != logits.size()) {
        throw new Dead("labels_length_mismatch");
      }
    }
    return obj;
  }

  /** Numbers past a double's range (1e999 reads as infinity) and nesting past MAX_DEPTH. */
  private static void check(JsonNode node, int depth) throws Dead {
    JsonNodeType type = node.getNodeType();
    if (type == JsonNodeType.NUMBER) {
      if (!Double.isFinite(node.doubleValue())) {
        throw new Dead("non_finite_number");
      }
    } else if (type == JsonNodeType.ARRAY || type == JsonNodeType.OBJECT) {
      if (depth > MAX_DEPTH) {
        throw new Dead("too_deep");
      }
      for (Iterator<JsonNode> it = node.elements(); it.hasNext(); ) {
        check(it.next(), depth + 1);
      }
    }
  }

  private static String unreadable(byte[] raw) {
    try {
      StandardCharsets.UTF_8
          .newDecoder()
          .onMalformedInput(CodingErrorAction.REPORT)
          .onUnmappableCharacter(CodingErrorAction.REPORT)
          .decode(ByteBuffer.wrap(raw));
    } catch (CharacterCodingException ex) {
      return "not_utf8";
    }
    try {
      LENIENT.readTree(raw);
      return "non_finite_number"; // readable once NaN and Infinity are allowed
    } catch (IOException ex) {
      return "not_json";
    }
  }
}
