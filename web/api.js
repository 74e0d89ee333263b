// The web API of docs/API.md, and the upload to the presigned POST.

export class ApiError extends Error {
  constructor(status, body) {
    super(body.reason || body.message || `the server answered ${status}`);
    this.status = status;
    this.code = body.error || "error";
    this.reason = body.reason || body.message || `the server answered ${status}`;
    this.action = body.action || "try again in a moment";
  }
}

export function createApi(config, auth) {
  const base = config.apiUrl.replace(/\/$/, "");

  async function call(method, path, body) {
    const headers = { Accept: "application/json", ...(await auth.headers()) };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(`${base}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch {
      throw new ApiError(0, { reason: "the server cannot be reached", action: "check your connection and try again" });
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  return {
    createUpload: (request) => call("POST", "/uploads", request),
    getUpload: (id) => call("GET", `/uploads/${encodeURIComponent(id)}`),
    listUploads: () => call("GET", "/uploads"),
  };
}

/** POST the file to the presigned form: every field in order, the file last; `onProgress(0..1)`. */
export function uploadFile(upload, blob, fileName, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const [name, value] of Object.entries(upload.fields)) form.append(name, value);
    form.append("file", blob, fileName);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", upload.url);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress(1);
        resolve();
        return;
      }
      // S3 answers with an XML error document.
      const message = /<Message>([^<]*)<\/Message>/.exec(xhr.responseText || "")?.[1];
      reject(new ApiError(xhr.status, {
        error: "upload-refused",
        reason: `the upload was refused: ${message || xhr.status}`,
        action: "try again; if it keeps failing, pick a smaller file",
      }));
    };
    xhr.onerror = () => reject(new ApiError(0, {
      error: "upload-failed",
      reason: "the upload did not reach the server",
      action: "check your connection and try again",
    }));
    xhr.send(form);
  });
}
