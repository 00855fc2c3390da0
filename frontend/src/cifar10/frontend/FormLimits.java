package cifar10.frontend;

import cifar10.frontend.Agent.UnexpectedBytecode;
import java.util.List;
import org.objectweb.asm.tree.ClassNode;
import org.pytorch.serve.http.BadRequestException;
import org.pytorch.serve.util.messages.InputParameter;
import org.pytorch.serve.util.messages.RequestInput;

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
    static final String PARAMETER = "org/pytorch/serve/util/messages/InputParameter";
    static final String DESCRIPTOR = "(L" + PARAMETER + ";)V";
    /** Parameters one request may carry: the image field and a few more. */
    static final int MAX_PARAMETERS = 16;

    private FormLimits() {}

    /** RequestInput's class file with addParameter(parameter) counting first. */
    static byte[] rewrite(byte[] original) throws UnexpectedBytecode {
        ClassNode input = Agent.read(original);
        Agent.callFirst(
                Agent.method(input, "addParameter", DESCRIPTOR),
                "FormLimits",
                "(L" + REQUEST_INPUT + ";L" + PARAMETER + ";)V",
                0,
                1);
        return Agent.write(input);
    }

    /** Throws BadRequestException (400) when `request` already holds MAX_PARAMETERS parameters. */
    public static void addParameter(RequestInput request, InputParameter parameter) {
        if (request.getParameters().size() >= MAX_PARAMETERS) {
            throw new BadRequestException("at most " + MAX_PARAMETERS + " form fields and query parameters a"
                    + " request: send the image as the raw body or as one file field named 'image'");
        }
    }
}
