package bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.File;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Random;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;

/**
 * The worker's job as a Kafka Streams application: {@code java -jar kstreams-peer.jar SPEC.json}.
 *
 * <p>One source node reads every input topic; one processor routes each record (Router) and
 * forwards it to the routed, escalated or dead-letter sink. Dead letters keep the value byte for
 * byte and gain a {@code dlq.reason} header. Settings: see {@link #settings}. Before joining the
 * group it routes a warm-up set of events in-process so that the JIT has compiled the routing
 * and JSON code before the benchmark's clock starts. Prints one JSON line when its first
 * records arrive (the first_consumed report of bench/spec.py), runs until SIGTERM, exits 0.
 */
public final class KStreamsPeer {
  private static final ObjectMapper MAPPER = new ObjectMapper();
  private static final PrintStream OUT = new PrintStream(System.out, true, StandardCharsets.UTF_8);
  private static volatile boolean firstSeen;
  private static final int[] WIDTHS = {3, 10, 100}; // the benchmark's (bench/spec.py)

  private KStreamsPeer() {}

  public static void main(String[] args) throws Exception {
    JsonNode spec = MAPPER.readTree(new File(args[0]));
    Map<String, Router.Policy> policies = new HashMap<>();
    for (Iterator<Map.Entry<String, JsonNode>> it = spec.get("inputs").fields(); it.hasNext(); ) {
      Map.Entry<String, JsonNode> e = it.next();
      policies.put(e.getKey(), Router.Policy.of(e.getValue()));
    }
    Router router = new Router(policies);
    watchParent();
    long warmStart = System.nanoTime();
    int warmCount = Integer.getInteger("bench.warmup_events", 300_000);
    warmUp(router, policies, warmCount);
    System.err.printf(
        "kstreams-peer: warmed up on %,d events in %.1f s%n",
        warmCount, (System.nanoTime() - warmStart) / 1e9);

    JsonNode outputs = spec.get("outputs");
    Topology topology = new Topology();
    topology.addSource(
        "inputs",
        new ByteArrayDeserializer(),
        new ByteArrayDeserializer(),
        policies.keySet().stream().sorted().toArray(String[]::new));
    topology.addProcessor("route", () -> new Route(router), "inputs");
    for (String sink : new String[] {"routed", "escalated", "dead_letter"}) {
      topology.addSink(
          sink,
          outputs.get(sink).asText(),
          new ByteArraySerializer(),
          new ByteArraySerializer(),
          "route");
    }
    Path state = Files.createTempDirectory("kstreams-peer-");
    KafkaStreams streams = new KafkaStreams(topology, settings(spec, state));
    CountDownLatch stopped = new CountDownLatch(1);
    streams.setUncaughtExceptionHandler(
        exc -> {
          exc.printStackTrace();
          return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
    streams.setStateListener(
        (now, before) -> {
          if (now == KafkaStreams.State.ERROR) {
            System.err.println("kstreams-peer: the client is in state ERROR");
            Runtime.getRuntime().halt(1);
          }
        });
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  streams.close(Duration.ofSeconds(30));
                  stopped.countDown();
                  // SIGTERM is how the bench stops every contender: a clean stop exits 0.
                  Runtime.getRuntime().halt(0);
                }));
    streams.start();
    stopped.await();
  }

  /**
   * The settings, stated. Fetching, batching and commits as close to the worker's as the two
   * clients allow (docs/performance.md, "Peers").
   */
  static Properties settings(JsonNode spec, Path state) {
    JsonNode processing = spec.path("processing");
    JsonNode peer = spec.path("peer");
    boolean eos = "exactly_once".equals(processing.path("guarantee").asText("at_least_once"));
    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, spec.get("group").asText());
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, spec.get("bootstrap").asText());
    p.put(StreamsConfig.STATE_DIR_CONFIG, state.toString());
    p.put(
        StreamsConfig.PROCESSING_GUARANTEE_CONFIG,
        eos ? StreamsConfig.EXACTLY_ONCE_V2 : StreamsConfig.AT_LEAST_ONCE);
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, peer.path("stream_threads").asInt(1));
    // The worker commits after every batch (2,000 records, 10,000 under exactly-once), every
    // few tens of ms at its rate; Streams' defaults are 30 s (ALOS) and 100 ms (EOS). 100 ms
    // for both keeps the commit cadence of the same order as the worker's.
    p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, peer.path("commit_interval_ms").asInt(100));
    // The worker's consumer: kafka.fetch_min_bytes, fetch_max_wait_ms, max_partition_fetch_bytes
    // (larger under exactly-once) and its batch, processing.max_batch_records.
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.FETCH_MIN_BYTES_CONFIG), 196_608);
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG), 10);
    p.put(
        StreamsConfig.consumerPrefix(ConsumerConfig.MAX_PARTITION_FETCH_BYTES_CONFIG),
        eos ? 8_388_608 : 1_048_576);
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.MAX_POLL_RECORDS_CONFIG), eos ? 10_000 : 2_000);
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
    // The worker's producer: idempotent, acks=all, batches of up to 1 MiB. Its linger is 0
    // because it hands a whole batch over at once; a record-at-a-time producer needs a few ms
    // to fill batches, Kafka 4's own default linger (5 ms).
    p.put(StreamsConfig.producerPrefix(ProducerConfig.ACKS_CONFIG), "all");
    p.put(StreamsConfig.producerPrefix(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG), true);
    p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), 5);
    p.put(StreamsConfig.producerPrefix(ProducerConfig.BATCH_SIZE_CONFIG), 1_048_576);
    p.put(StreamsConfig.producerPrefix(ProducerConfig.MAX_REQUEST_SIZE_CONFIG), 8_388_608);
    return p;
  }

  /** Routes each record and forwards it to the sink named by its destination. */
  static final class Route implements Processor<byte[], byte[], byte[], byte[]> {
    private final Router router;
    private ProcessorContext<byte[], byte[]> context;

    Route(Router router) {
      this.router = router;
    }

    @Override
    public void init(ProcessorContext<byte[], byte[]> context) {
      this.context = context;
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
      if (!firstSeen) {
        firstConsumed();
      }
      RecordMetadata meta = context.recordMetadata().orElseThrow();
      Router.Outcome out =
          router.route(
              meta.topic(), meta.partition(), meta.offset(), record.timestamp(), record.value());
      Record<byte[], byte[]> next = record.withValue(out.value());
      if (out.reason() != null) {
        Headers headers = record.headers();
        headers.add("dlq.reason", out.reason().getBytes(StandardCharsets.UTF_8));
        next = next.withHeaders(headers);
      }
      context.forward(next, out.destination());
    }
  }

  /** The first_consumed line of bench/spec.py: when, and the CPU used so far (/proc). */
  private static synchronized void firstConsumed() {
    if (firstSeen) {
      return;
    }
    firstSeen = true;
    double now = System.currentTimeMillis() / 1000.0;
    OUT.println("{\"first_consumed\": " + now + ", \"cpu\": " + cpuSeconds() + "}");
  }

  /** utime + stime of every thread of this process, as bench/measure.py reads them. */
  static double cpuSeconds() {
    try {
      String stat = Files.readString(Path.of("/proc/self/stat"));
      String[] fields = stat.substring(stat.lastIndexOf(')') + 2).split(" ");
      long ticks = Long.parseLong(fields[11]) + Long.parseLong(fields[12]);
      return ticks / (double) Integer.getInteger("bench.clk_tck", 100);
    } catch (java.io.IOException ex) {
      throw new IllegalStateException(ex);
    }
  }

  /** Exit when the benchmark that started this process is gone (no prctl from Java). */
  private static void watchParent() {
    ProcessHandle parent = ProcessHandle.current().parent().orElse(null);
    Thread t =
        new Thread(
            () -> {
              while (parent != null && parent.isAlive()) {
                try {
                  Thread.sleep(1000);
                } catch (InterruptedException ex) {
                  return;
                }
              }
              System.exit(0);
            },
            "watch-parent");
    t.setDaemon(true);
    t.start();
  }

  /**
   * Route events shaped like the benchmark's (each input topic's width, some malformed) until
   * the JIT has compiled the hot code: what a long-running application would have done by
   * then. Not counted: it runs before the first record is consumed.
   */
  static void warmUp(Router router, Map<String, Router.Policy> policies, int count) {
    Random rng = new Random(7);
    List<String> topics = new ArrayList<>(policies.keySet());
    List<byte[]> bad =
        List.of(
            "this is not json".getBytes(StandardCharsets.UTF_8),
            "{\"id\": \"one\", \"logits\": [1.0]}".getBytes(StandardCharsets.UTF_8),
            "{\"logits\": [3.2, 2.8]}".getBytes(StandardCharsets.UTF_8));
    long sink = 0;
    for (int i = 0; i < count; i++) {
      String topic = topics.get(i % topics.size());
      byte[] value;
      if (i % 50 == 0) {
        value = bad.get(rng.nextInt(bad.size()));
      } else {
        Router.Policy policy = policies.get(topic);
        int width = policy.labels() != null ? policy.labels().size() : WIDTHS[i % WIDTHS.length];
        StringBuilder doc = new StringBuilder("{\"id\":\"warm-").append(i).append("\",\"logits\":[");
        for (int k = 0; k < width; k++) {
          doc.append(k == 0 ? "" : ",").append(rng.nextGaussian());
        }
        doc.append("],\"model\":\"warm-up\",\"sent_ns\":").append(System.nanoTime()).append('}');
        value = doc.toString().getBytes(StandardCharsets.UTF_8);
      }
      sink += router.route(topic, 0, i, 0L, value).value().length;
    }
    if (sink == 42) {
      System.err.print(""); // keeps the loop's result alive
    }
  }

}
