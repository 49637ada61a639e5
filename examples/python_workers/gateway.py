from urllib.parse import urlparse

from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        if path == "/greet":
            return await self.env.GREETER.fetch(request)
        if path == "/echo":
            return await self.env.ECHO.fetch(request)
        if path == "/rpc":
            result = await self.env.GREETER.greet("RPC")
            return Response(f"Result: {result}")
        return Response("Not Found", status=404)
