export const USAGE = "";
export async function main(): Promise<number> { return 1; }
