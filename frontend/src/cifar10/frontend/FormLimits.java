package cifar10.frontend;

import cifar10.frontend.Agent.UnexpectedBytecode;
import java.util.List;
import org.objectweb.asm.tree.ClassNode;

/**
 * A request carries at most MAX_PARAMETERS parameters (query parameters and form fields) (applied
 * by {@link Agent}).
 *
 * <p>TorchServe decodes every field of a form into the request it queues: a body of thousands of
 * tiny fields costs the worker a quarter of a second to read, and the error naming them grows with
 * it. This rewrite calls {@link #addParameter} first in {@code RequestInput.addParameter}: the
 * parameter past the limit is refused with 400 while the form is decoded, before the request is
 * queued.
 */
public final class FormLimits {
    static final String REQUEST_INPUT = "org/pytorch/serve/util/messages/RequestInput";
    static final String DESCRIPTOR = "(Lorg/pytorch/serve/util/messages/InputParameter;)V";
    static final String REFUSAL = "org.pytorch.serve.http.BadRequestException"; // answered 400
    /** Parameters one request may carry: the image field and a few more. */
    static final int MAX_PARAMETERS = 16;

    private FormLimits() {}

    /** RequestInput's class file with addParameter(parameter) counting first. */
    static byte[] rewrite(byte[] original) throws UnexpectedBytecode {
        ClassNode input = Agent.read(original);
        Agent.callFirst(
                Agent.method(input, "addParameter", DESCRIPTOR),
                "FormLimits",
                "(Ljava/lang/Object;Ljava/lang/Object;)V",
                0,
                1);
        try {
            Class.forName(REFUSAL, false, ClassLoader.getSystemClassLoader()).getConstructor(String.class);
        } catch (ReflectiveOperationException missing) {
            throw new UnexpectedBytecode(REFUSAL + "(String) not found: " + missing);
        }
        return Agent.write(input);
    }

    /** Throws BadRequestException when `request` already holds MAX_PARAMETERS parameters. */
    public static void addParameter(Object request, Object parameter) throws Exception {
        if (DrainBatching.Accessors.PARAMETERS == null || ((List<?>) DrainBatching.Accessors.PARAMETERS.invoke(request)).size() < MAX_PARAMETERS) {
            return;
        }
        throw (Exception) Class.forName(REFUSAL)
                .getConstructor(String.class)
                .newInstance("at most " + MAX_PARAMETERS + " form fields and query parameters a request: send the"
                        + " image as the raw body or as one file field named 'image'");
    }
}
