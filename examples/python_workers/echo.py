from workers import Response


async def on_fetch(request, env, ctx):
    body = await request.json()  # returns a native Python dict
    return Response.json({"echo": body, "mode": env.MODE}, status=201)
