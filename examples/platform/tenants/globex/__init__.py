"""Customer "globex": a package whose Default class is the Worker."""

from fastbind import Request, Response, WorkerEntrypoint

from .pages import page


class Default(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        return Response(page(request.url))
