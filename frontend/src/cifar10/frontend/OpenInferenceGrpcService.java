package cifar10.frontend;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.google.protobuf.ByteString;
import io.grpc.MethodDescriptor;
import io.grpc.ServerServiceDefinition;
import io.grpc.Status;
import io.grpc.stub.ServerCallStreamObserver;
import io.grpc.stub.ServerCalls;
import io.grpc.stub.StreamObserver;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import org.pytorch.serve.archive.model.ModelNotFoundException;
import org.pytorch.serve.archive.model.ModelVersionNotFoundException;
import org.pytorch.serve.grpc.openinference.GRPCInferenceServiceGrpc;
import org.pytorch.serve.grpc.openinference.OpenInferenceGrpc.ModelInferRequest;
import org.pytorch.serve.grpc.openinference.OpenInferenceGrpc.ModelInferResponse;
import org.pytorch.serve.grpc.openinference.OpenInferenceGrpc.ModelMetadataRequest;
import org.pytorch.serve.grpc.openinference.OpenInferenceGrpc.ModelMetadataResponse;
import org.pytorch.serve.grpc.openinference.OpenInferenceGrpc.ModelReadyRequest;
import org.pytorch.serve.grpc.openinference.OpenInferenceGrpc.ModelReadyResponse;
import org.pytorch.serve.grpc.openinference.OpenInferenceGrpc.ServerLiveRequest;
import org.pytorch.serve.grpc.openinference.OpenInferenceGrpc.ServerLiveResponse;
import org.pytorch.serve.grpc.openinference.OpenInferenceGrpc.ServerMetadataRequest;
import org.pytorch.serve.grpc.openinference.OpenInferenceGrpc.ServerMetadataResponse;
import org.pytorch.serve.grpc.openinference.OpenInferenceGrpc.ServerReadyRequest;
import org.pytorch.serve.grpc.openinference.OpenInferenceGrpc.ServerReadyResponse;
import org.pytorch.serve.job.Job;
import org.pytorch.serve.metrics.IMetric;
import org.pytorch.serve.metrics.MetricCache;
import org.pytorch.serve.util.ApiUtils;
import org.pytorch.serve.util.ConfigManager;
import org.pytorch.serve.util.messages.InputParameter;
import org.pytorch.serve.util.messages.RequestInput;
import org.pytorch.serve.util.messages.WorkerCommands;
import org.pytorch.serve.wlm.Model;
import org.pytorch.serve.wlm.ModelManager;

/**
 * The Open Inference Protocol v2 over gRPC as Triton's and KServe's clients call it: the service
 * {@code inference.GRPCInferenceService} of KServe's {@code grpc_predict_v2.proto} (added to the
 * inference port's gRPC server by {@link GrpcDoor}). Its messages are those of TorchServe's own
 * {@code open_inference_grpc.proto} (the same fields under another package name), so TorchServe's
 * generated classes are reused under the standard method names.
 *
 * <p>ModelInfer goes into the model's queue as the REST {@code /v2/.../infer} request with the
 * binary data extension that it is ({@link OpenInference}: marked for the handler, one request of
 * a batch like the others): the tensors' bytes are {@code raw_input_contents} (or a BYTES input's
 * {@code bytes_contents}, length-prefixed), and every output comes back as binary data, which is
 * {@code raw_output_contents}' layout. The handler checks the request and answers or refuses it.
 */
final class OpenInferenceGrpcService {
    static final String SERVICE = "inference.GRPCInferenceService";
    static final String HEADER_LENGTH = "Inference-Header-Content-Length";

    private OpenInferenceGrpcService() {}

    static ServerServiceDefinition service() {
        return ServerServiceDefinition.builder(SERVICE)
                .addMethod(named(GRPCInferenceServiceGrpc.getServerLiveMethod()),
                        ServerCalls.asyncUnaryCall(OpenInferenceGrpcService::serverLive))
                .addMethod(named(GRPCInferenceServiceGrpc.getServerReadyMethod()),
                        ServerCalls.asyncUnaryCall(OpenInferenceGrpcService::serverReady))
                .addMethod(named(GRPCInferenceServiceGrpc.getModelReadyMethod()),
                        ServerCalls.asyncUnaryCall(OpenInferenceGrpcService::modelReady))
                .addMethod(named(GRPCInferenceServiceGrpc.getServerMetadataMethod()),
                        ServerCalls.asyncUnaryCall(OpenInferenceGrpcService::serverMetadata))
                .addMethod(named(GRPCInferenceServiceGrpc.getModelMetadataMethod()),
                        ServerCalls.asyncUnaryCall(OpenInferenceGrpcService::modelMetadata))
                .addMethod(named(GRPCInferenceServiceGrpc.getModelInferMethod()),
                        ServerCalls.asyncUnaryCall(OpenInferenceGrpcService::modelInfer))
                .build();
    }

    /** TorchServe's method under the standard service name. */
    static <Q, A> MethodDescriptor<Q, A> named(MethodDescriptor<Q, A> method) {
        return method.toBuilder()
                .setFullMethodName(MethodDescriptor.generateFullMethodName(SERVICE, method.getBareMethodName()))
                .setSchemaDescriptor(null)
                .build();
    }

    static void serverLive(ServerLiveRequest request, StreamObserver<ServerLiveResponse> answer) {
        reply(answer, ServerLiveResponse.newBuilder().setLive(true).build());
    }

    static void serverReady(ServerReadyRequest request, StreamObserver<ServerReadyResponse> answer) {
        reply(answer, ServerReadyResponse.newBuilder().setReady(ApiUtils.isModelHealthy()).build());
    }

    static void serverMetadata(ServerMetadataRequest request, StreamObserver<ServerMetadataResponse> answer) {
        reply(answer, ServerMetadataResponse.newBuilder()
                .setName("torchserve")
                .setVersion(ConfigManager.getInstance().getVersion())
                .build());
    }

    static void modelReady(ModelReadyRequest request, StreamObserver<ModelReadyResponse> answer) {
        Model model = model(request.getName(), request.getVersion(), answer);
        if (model != null) {
            reply(answer, ModelReadyResponse.newBuilder().setReady(OpenInference.isReady(model)).build());
        }
    }

    static void modelMetadata(ModelMetadataRequest request, StreamObserver<ModelMetadataResponse> answer) {
        Model model = model(request.getName(), request.getVersion(), answer);
        if (model == null) {
            return;
        }
        JsonObject metadata;
        try {
            metadata = OpenInference.metadata(request.getName(), model);
        } catch (IOException missing) {
            answer.onError(Status.NOT_FOUND.withDescription(missing.getMessage()).asRuntimeException());
            return;
        }
        ModelMetadataResponse.Builder reply = ModelMetadataResponse.newBuilder()
                .setName(metadata.get("name").getAsString())
                .setPlatform(metadata.get("platform").getAsString());
        metadata.getAsJsonArray("versions").forEach(version -> reply.addVersions(version.getAsString()));
        for (JsonElement input : metadata.getAsJsonArray("inputs")) {
            reply.addInputs(tensor(input.getAsJsonObject()));
        }
        for (JsonElement output : metadata.getAsJsonArray("outputs")) {
            reply.addOutputs(tensor(output.getAsJsonObject()));
        }
        reply(answer, reply.build());
    }

    private static ModelMetadataResponse.TensorMetadata tensor(JsonObject tensor) {
        ModelMetadataResponse.TensorMetadata.Builder metadata = ModelMetadataResponse.TensorMetadata.newBuilder()
                .setName(tensor.get("name").getAsString())
                .setDatatype(tensor.get("datatype").getAsString());
        tensor.getAsJsonArray("shape").forEach(size -> metadata.addShape(size.getAsLong()));
        return metadata.build();
    }

    /** Into the model's queue as a REST v2 request with binary data (see the class comment). */
    static void modelInfer(ModelInferRequest request, StreamObserver<ModelInferResponse> answer) {
        String version = request.getModelVersion().isEmpty() ? null : request.getModelVersion();
        Model model = model(request.getModelName(), request.getModelVersion(), answer);
        if (model == null) {
            return;
        }
        JsonObject header = new JsonObject();
        if (!request.getId().isEmpty()) {
            header.addProperty("id", request.getId());
        }
        ByteArrayOutputStream binary = new ByteArrayOutputStream();
        JsonArray inputs = new JsonArray();
        for (int index = 0; index < request.getInputsCount(); index++) {
            ModelInferRequest.InferInputTensor tensor = request.getInputs(index);
            JsonObject input = new JsonObject();
            input.addProperty("name", tensor.getName());
            input.addProperty("datatype", tensor.getDatatype());
            JsonArray shape = new JsonArray();
            tensor.getShapeList().forEach(shape::add);
            input.add("shape", shape);
            byte[] data = index < request.getRawInputContentsCount()
                    ? request.getRawInputContents(index).toByteArray()
                    : lengthPrefixed(tensor.getContents().getBytesContentsList());
            binary.writeBytes(data);
            JsonObject parameters = new JsonObject();
            parameters.addProperty("binary_data_size", data.length);
            input.add("parameters", parameters);
            inputs.add(input);
        }
        header.add("inputs", inputs);
        if (request.getOutputsCount() > 0) {
            JsonArray outputs = new JsonArray();
            for (ModelInferRequest.InferRequestedOutputTensor asked : request.getOutputsList()) {
                JsonObject output = new JsonObject();
                output.addProperty("name", asked.getName());
                JsonObject parameters = new JsonObject();
                parameters.addProperty("binary_data", true);
                output.add("parameters", parameters);
                outputs.add(output);
            }
            header.add("outputs", outputs);
        }
        JsonObject parameters = new JsonObject();
        parameters.addProperty("binary_data_output", true);
        header.add("parameters", parameters);
        byte[] json = header.toString().getBytes(StandardCharsets.UTF_8);
        byte[] body = new byte[json.length + binary.size()];
        System.arraycopy(json, 0, body, 0, json.length);
        System.arraycopy(binary.toByteArray(), 0, body, json.length, binary.size());

        RequestInput input = new RequestInput(UUID.randomUUID().toString());
        input.setClientExpireTS(model.getClientTimeoutInMills());
        input.updateHeaders(OpenInference.PROTOCOL_HEADER, "v2");
        input.updateHeaders(HEADER_LENGTH, String.valueOf(json.length));
        input.addParameter(new InputParameter("body", body, "application/octet-stream"));
        countRequest(request.getModelName(), version);
        try {
            if (!ModelManager.getInstance().addJob(new InferJob(answer, request.getModelName(), version, input))) {
                answer.onError(GrpcDoor.error(503, ApiUtils.getStreamingInferenceErrorResponseMessage(
                        request.getModelName(), version), Map.of("Retry-After", "1")));
            }
        } catch (ModelNotFoundException | ModelVersionNotFoundException missing) {
            answer.onError(Status.NOT_FOUND.withDescription(missing.getMessage()).asRuntimeException());
        }
    }

    /** BYTES elements as the binary data extension holds them: each a 4-byte little-endian length, then its bytes. */
    static byte[] lengthPrefixed(List<ByteString> elements) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        for (ByteString element : elements) {
            out.writeBytes(ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putInt(element.size()).array());
            out.writeBytes(element.toByteArray());
        }
        return out.toByteArray();
    }

    /** ts_inference_requests_total, as TorchServe counts its own gRPC and REST requests. */
    private static void countRequest(String name, String version) {
        IMetric requests = MetricCache.getInstance().getMetricFrontend("ts_inference_requests_total");
        if (requests != null) {
            requests.addOrUpdate(
                    List.of(name, version == null ? "default" : version, ConfigManager.getInstance().getHostName()), 1);
        }
    }

    /** A v2 request in the model's queue; the handler's answer goes back as a ModelInferResponse. */
    static final class InferJob extends Job {
        private final ServerCallStreamObserver<ModelInferResponse> answer;

        InferJob(StreamObserver<ModelInferResponse> answer, String model, String version, RequestInput input) {
            super(model, version, WorkerCommands.PREDICT, input);
            this.answer = (ServerCallStreamObserver<ModelInferResponse>) answer;
        }

        @Override
        public void response(
                byte[] body, CharSequence contentType, int status, String phrase, Map<String, String> headers) {
            if (answer.isCancelled()) {
                return;
            }
            if (status >= 300) {
                String message;
                try {
                    message = JsonParser.parseString(new String(body, StandardCharsets.UTF_8))
                            .getAsJsonObject().get("error").getAsString();
                } catch (RuntimeException notTheProtocols) {
                    message = new String(body, StandardCharsets.UTF_8);
                }
                answer.onError(GrpcDoor.error(status, message, headers));
                return;
            }
            String length = headers.get(HEADER_LENGTH);
            int jsonLength = length == null ? body.length : Integer.parseInt(length);
            JsonObject json = JsonParser.parseString(new String(body, 0, jsonLength, StandardCharsets.UTF_8))
                    .getAsJsonObject();
            ModelInferResponse.Builder reply = ModelInferResponse.newBuilder()
                    .setModelName(json.get("model_name").getAsString())
                    .setModelVersion(json.get("model_version").getAsString());
            if (json.has("id")) {
                reply.setId(json.get("id").getAsString());
            }
            int offset = jsonLength;
            for (JsonElement element : json.getAsJsonArray("outputs")) {
                JsonObject output = element.getAsJsonObject();
                ModelInferResponse.InferOutputTensor.Builder tensor = ModelInferResponse.InferOutputTensor.newBuilder()
                        .setName(output.get("name").getAsString())
                        .setDatatype(output.get("datatype").getAsString());
                output.getAsJsonArray("shape").forEach(size -> tensor.addShape(size.getAsLong()));
                int size = output.getAsJsonObject("parameters").get("binary_data_size").getAsInt();
                reply.addOutputs(tensor);
                reply.addRawOutputContents(ByteString.copyFrom(body, offset, size));
                offset += size;
            }
            answer.onNext(reply.build());
            answer.onCompleted();
        }

        @Override
        public void sendError(int status, String error) {
            if (!answer.isCancelled()) {
                answer.onError(GrpcDoor.error(status, error, null));
            }
        }

        @Override
        public boolean isOpen() {
            return !answer.isCancelled();
        }
    }

    /** The model (its default version, or `version`); null after answering NOT_FOUND when there is none. */
    private static Model model(String name, String version, StreamObserver<?> answer) {
        try {
            Model model = ModelManager.getInstance().getModel(name, version.isEmpty() ? null : version);
            if (model == null) {
                answer.onError(Status.NOT_FOUND.withDescription("model " + name + " not found").asRuntimeException());
            }
            return model;
        } catch (ModelVersionNotFoundException missing) {
            answer.onError(Status.NOT_FOUND.withDescription(missing.getMessage()).asRuntimeException());
            return null;
        }
    }

    private static <A> void reply(StreamObserver<A> answer, A reply) {
        answer.onNext(reply);
        answer.onCompleted();
    }
}
