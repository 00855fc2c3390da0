package cifar10.frontend;

import cifar10.frontend.Agent.UnexpectedBytecode;
import io.netty.channel.Channel;
import io.netty.channel.ChannelHandlerContext;
import io.netty.handler.codec.http.HttpRequest;
import io.netty.handler.codec.http.HttpResponse;
import io.netty.handler.codec.http.QueryStringDecoder;
import io.netty.util.AttributeKey;
import io.prometheus.client.Histogram;
import org.objectweb.asm.tree.ClassNode;
import org.pytorch.serve.util.ConfigManager;

/**
 * What a client waits, as a Prometheus histogram on TorchServe's /metrics (applied by {@link Agent}):
 * {@code cifar10_request_duration_seconds{model, version, status}}, from the frontend receiving a
 * prediction request ({@code NettyUtils.requestReceived}) to its answer being handed to Netty
 * ({@code NettyUtils.sendHttpResponse}), for {@code /predictions/{model}[/{version}]}; {@code status}
 * is the answer's class (2xx, 4xx, 5xx). TorchServe's own latency metrics are sums (counters), from
 * which no percentile can be read. {@code request_duration_histogram=false} in config.properties
 * turns it off.
 */
public final class RequestDuration {
    static final String NETTY_UTILS = "org/pytorch/serve/util/NettyUtils";
    static final String PROPERTY = "request_duration_histogram";
    /** Seconds: from a lone request's few milliseconds to a queue's seconds. */
    static final double[] BUCKETS = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

    private RequestDuration() {}

    /** NettyUtils' class file: requestReceived(channel, request) and sendHttpResponse(ctx, response, keepAlive) call ours first. */
    static byte[] rewrite(byte[] original) throws UnexpectedBytecode {
        ClassNode utils = Agent.read(original);
        Agent.callFirst(
                Agent.method(utils, "requestReceived", "(Lio/netty/channel/Channel;Lio/netty/handler/codec/http/HttpRequest;)V"),
                "RequestDuration",
                "(Lio/netty/channel/Channel;Lio/netty/handler/codec/http/HttpRequest;)V",
                0,
                1);
        Agent.callFirst(
                Agent.method(
                        utils,
                        "sendHttpResponse",
                        "(Lio/netty/channel/ChannelHandlerContext;Lio/netty/handler/codec/http/HttpResponse;Z)V"),
                "RequestDuration",
                "(Lio/netty/channel/ChannelHandlerContext;Lio/netty/handler/codec/http/HttpResponse;)V",
                0,
                1);
        return Agent.write(utils);
    }

    /** A prediction request in flight on a connection: its model, version and when it arrived. */
    private record Started(String model, String version, long nanos) {}

    private static final AttributeKey<Started> STARTED = AttributeKey.valueOf("cifar10.request-duration");

    /** Created at the first request, when TorchServe's configuration is read (not while the agent starts). */
    private static final class Metric {
        static final Histogram DURATION = Boolean.parseBoolean(ConfigManager.getInstance().getProperty(PROPERTY, "true"))
                ? Histogram.build()
                        .name("cifar10_request_duration_seconds")
                        .help("Seconds from a prediction request's arrival at the frontend to its answer, by answer class")
                        .labelNames("model", "version", "status")
                        .buckets(BUCKETS)
                        .register()
                : null;
    }

    public static void requestReceived(Channel channel, HttpRequest request) {
        if (Metric.DURATION == null) {
            return;
        }
        String[] segments = new QueryStringDecoder(request.uri()).path().split("/");
        if (segments.length >= 3 && segments.length <= 4 && segments[1].equals("predictions")) {
            String version = segments.length == 4 ? segments[3] : "default";
            channel.attr(STARTED).set(new Started(segments[2], version, System.nanoTime()));
        } else {
            channel.attr(STARTED).set(null);
        }
    }

    public static void sendHttpResponse(ChannelHandlerContext ctx, HttpResponse response) {
        Started started = Metric.DURATION == null ? null : ctx.channel().attr(STARTED).getAndSet(null);
        if (started != null) {
            String status = response.status().code() / 100 + "xx";
            Metric.DURATION.labels(started.model(), started.version(), status)
                    .observe((System.nanoTime() - started.nanos()) / 1e9);
        }
    }
}
