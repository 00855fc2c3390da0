package cifar10.frontend;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import com.google.gson.JsonParser;
import io.netty.channel.ChannelHandlerContext;
import io.netty.handler.codec.http.FullHttpRequest;
import io.netty.handler.codec.http.HttpMethod;
import io.netty.handler.codec.http.HttpResponseStatus;
import io.netty.handler.codec.http.QueryStringDecoder;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Map;
import org.pytorch.serve.archive.model.ModelNotFoundException;
import org.pytorch.serve.archive.model.ModelVersionNotFoundException;
import org.pytorch.serve.http.HttpRequestHandlerChain;
import org.pytorch.serve.util.ApiUtils;
import org.pytorch.serve.util.ConfigManager;
import org.pytorch.serve.util.NettyUtils;
import org.pytorch.serve.wlm.Model;
import org.pytorch.serve.wlm.ModelManager;

/**
 * The Open Inference Protocol v2 (KServe v2, Triton) over REST on the inference port, beside
 * TorchServe's own API ({@link FrontDoor} calls it from TorchServe's key check; docs/api.md is the
 * contract):
 *
 * <ul>
 *   <li>{@code /v2/health/live}, {@code /v2/health/ready}: without a key, as {@code /ping}.
 *   <li>{@code GET /v2}, {@code /v2/models/{name}[/versions/{v}]} and {@code .../ready}: server and
 *       model metadata, model readiness; the tensors are those of the archive's {@code
 *       cifar10_v2.json}, which the handler reads too.
 *   <li>{@code /v2/models/{name}[/versions/{v}]/infer}: into the model's queue as a {@code
 *       /predictions/{name}[/{v}]} request goes (one request of a batch like the others), marked
 *       for the handler with the header {@code inference_protocol: v2}, and never read as a form.
 * </ul>
 *
 * Other {@code /v2} paths go on to TorchServe as before. TorchServe's own v2 support (its
 * {@code kservev2} envelope) reads one request of a batch and JSON only; it is not used.
 */
final class OpenInference {
    /** The header the handler recognizes a v2 request by; removed from every other request. */
    static final String PROTOCOL_HEADER = "inference_protocol";
    static final String METADATA_FILE = "cifar10_v2.json";
    static final String LIVE = "/v2/health/live";
    static final String READY = "/v2/health/ready";

    private OpenInference() {}

    static boolean isHealth(String path) {
        return LIVE.equals(path) || READY.equals(path);
    }

    /** Live: the frontend answers. Ready: as /ping, every model has its minimum of healthy workers. */
    static void answerHealth(ChannelHandlerContext ctx, String path) {
        JsonObject body = new JsonObject();
        boolean ready = LIVE.equals(path) || ApiUtils.isModelHealthy();
        body.addProperty(LIVE.equals(path) ? "live" : "ready", ready);
        NettyUtils.sendJsonResponse(ctx, body, ready ? HttpResponseStatus.OK : HttpResponseStatus.SERVICE_UNAVAILABLE);
    }

    /**
     * A request with the right key: answers or routes it when its path is one of the protocol's
     * (returns true), else returns false and TorchServe goes on as before.
     */
    static boolean handle(
            ChannelHandlerContext ctx, FullHttpRequest request, QueryStringDecoder decoder, HttpRequestHandlerChain next)
            throws Exception {
        String path = decoder.path();
        if ("/v2".equals(path)) {
            if (isGet(ctx, request)) {
                JsonObject server = new JsonObject();
                server.addProperty("name", "torchserve");
                server.addProperty("version", ConfigManager.getInstance().getVersion());
                JsonArray extensions = new JsonArray();
                extensions.add("binary_tensor_data");
                server.add("extensions", extensions);
                NettyUtils.sendJsonResponse(ctx, server);
            }
            return true;
        }
        String[] parts = path.split("/", -1); // "", v2, models, name, [versions, v,] [ready | infer]
        if (parts.length < 4 || !"v2".equals(parts[1]) || !"models".equals(parts[2]) || parts[3].isEmpty()) {
            return false;
        }
        String name = parts[3];
        boolean versioned = parts.length >= 6 && "versions".equals(parts[4]) && !parts[5].isEmpty();
        String version = versioned ? parts[5] : null;
        String[] rest = Arrays.copyOfRange(parts, versioned ? 6 : 4, parts.length);
        if (rest.length == 1 && "infer".equals(rest[0])) {
            request.headers().set(PROTOCOL_HEADER, "v2");
            String[] predictions = versioned ? new String[] {"", "predictions", name, version} : new String[] {"", "predictions", name};
            next.handleRequest(ctx, request, decoder, predictions);
            return true;
        }
        boolean ready = rest.length == 1 && "ready".equals(rest[0]);
        if (rest.length > 1 || (rest.length == 1 && !ready)) {
            return false;
        }
        if (!isGet(ctx, request)) {
            return true;
        }
        Model model = model(ctx, name, version);
        if (model == null) {
            return true;
        }
        if (ready) {
            JsonObject body = new JsonObject();
            body.addProperty("name", name);
            boolean healthy = isReady(model);
            body.addProperty("ready", healthy);
            NettyUtils.sendJsonResponse(ctx, body, healthy ? HttpResponseStatus.OK : HttpResponseStatus.SERVICE_UNAVAILABLE);
        } else {
            sendMetadata(ctx, name, model);
        }
        return true;
    }

    /** A model is ready while it has a healthy worker. */
    static boolean isReady(Model model) {
        return ModelManager.getInstance().getNumHealthyWorkers(model.getModelVersionName()) > 0;
    }

    /** The model's metadata as JSON, or 404 when its archive has none. */
    private static void sendMetadata(ChannelHandlerContext ctx, String name, Model model) {
        try {
            NettyUtils.sendJsonResponse(ctx, metadata(name, model));
        } catch (IOException missing) {
            sendError(ctx, HttpResponseStatus.NOT_FOUND, missing.getMessage());
        }
    }

    /**
     * {name, versions, platform, inputs, outputs}: the archive's cifar10_v2.json with the model's
     * name and versions. Throws IOException, saying so, when the archive has none.
     */
    static JsonObject metadata(String name, Model model) throws IOException {
        JsonObject tensors;
        try {
            String text = Files.readString(Path.of(model.getModelDir().getPath(), METADATA_FILE), StandardCharsets.UTF_8);
            tensors = JsonParser.parseString(text).getAsJsonObject();
        } catch (IOException | JsonParseException | IllegalStateException missing) {
            throw new IOException("model " + name + " " + model.getVersion() + " has no v2 metadata (" + METADATA_FILE
                    + "): its archive predates the v2 protocol");
        }
        JsonObject body = new JsonObject();
        body.addProperty("name", name);
        JsonArray versions = new JsonArray();
        try {
            for (Map.Entry<String, Model> each : ModelManager.getInstance().getAllModelVersions(name)) {
                versions.add(each.getKey());
            }
        } catch (ModelNotFoundException gone) { // unregistered meanwhile
            throw new IOException(gone.getMessage());
        }
        body.add("versions", versions);
        for (Map.Entry<String, JsonElement> field : tensors.entrySet()) {
            body.add(field.getKey(), field.getValue());
        }
        return body;
    }

    /** The model (its default version, or `version`); null after answering 404 when there is none. */
    private static Model model(ChannelHandlerContext ctx, String name, String version) {
        try {
            Model model = ModelManager.getInstance().getModel(name, version);
            if (model == null) {
                sendError(ctx, HttpResponseStatus.NOT_FOUND, "model " + name + " not found");
            }
            return model;
        } catch (ModelVersionNotFoundException missing) {
            sendError(ctx, HttpResponseStatus.NOT_FOUND, missing.getMessage());
            return null;
        }
    }

    private static boolean isGet(ChannelHandlerContext ctx, FullHttpRequest request) {
        if (HttpMethod.GET.equals(request.method())) {
            return true;
        }
        sendError(ctx, HttpResponseStatus.METHOD_NOT_ALLOWED, request.method() + " is not allowed here: use GET");
        return false;
    }

    /** The protocol's error answer: {"error": message}. */
    static void sendError(ChannelHandlerContext ctx, HttpResponseStatus status, String message) {
        JsonObject body = new JsonObject();
        body.addProperty("error", message);
        NettyUtils.sendJsonResponse(ctx, body, status);
    }
}
